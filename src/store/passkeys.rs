//! Console passkeys: WebAuthn credentials bound to a user (web console sign-in). A row holds
//! the credential's public key and signature counter as webauthn-rs serializes them; nothing in
//! it is secret, but only an enrolment that proved the user's TOTP may add one.

use super::db::vals;
use super::{now_ms, StateDb, StoreError};

/// Most passkeys one user may hold (an enrolment flood cannot grow the table without bound).
pub const MAX_PASSKEYS_PER_USER: usize = 8;

impl StateDb {
    /// The serialized passkeys of `user`, oldest first.
    pub fn passkeys(&self, user: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.rows(
            "SELECT cred_id, passkey FROM console_passkeys WHERE user_name = $1 \
             ORDER BY created_ms, cred_id",
            vals![user],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect()
    }

    /// Binds a new passkey to `user`; false if the credential id is already bound (to anyone)
    /// or the user already holds [`MAX_PASSKEYS_PER_USER`].
    pub fn add_passkey(
        &self,
        user: &str,
        cred_id: &str,
        passkey: &str,
    ) -> Result<bool, StoreError> {
        self.transaction(|tx| {
            let held = tx.query(
                "SELECT cred_id FROM console_passkeys WHERE user_name = $1",
                vals![user],
            )?;
            if held.len() >= MAX_PASSKEYS_PER_USER {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO console_passkeys (cred_id, user_name, passkey, created_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (cred_id) DO NOTHING",
                vals![cred_id, user, passkey, now_ms()],
            )?;
            Ok(n == 1)
        })
    }

    /// Stores a passkey's updated form (its signature counter after a sign-in).
    pub fn update_passkey(
        &self,
        user: &str,
        cred_id: &str,
        passkey: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE console_passkeys SET passkey = $3 WHERE cred_id = $1 AND user_name = $2",
            vals![cred_id, user, passkey],
        )?;
        Ok(())
    }
}
