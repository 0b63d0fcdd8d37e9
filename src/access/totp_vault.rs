//! Users' TOTP secrets at rest. A copy of the database (a backup, a stolen disk image) must not
//! let anyone mint admin codes, so each secret is sealed with the keystore's KDF and AEAD under
//! a key derived from the keystore passphrase, bound to its user's name.
//!
//! Rows written before sealing existed (or by a CLI that had no passphrase) hold the raw
//! secret; the daemon seals every such row at start and any it meets later, so plaintext does
//! not outlive the next start.

use zeroize::Zeroizing;

use crate::sealing::{new_salt, KdfParams, Passphrase, SealError, SealingKey};
use crate::store::{SecretKdfRow, StateDb, StoreError, UserRecord};

/// Domain of the check value: proves the passphrase at start without touching a user's secret.
const CHECK_AAD: &[u8] = b"keyguard/totp-vault/check";
const CHECK_VALUE: &[u8] = b"keyguard totp vault v1";

/// Why a secret could not be read or stored. Never carries secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed value did not open, or sealing failed.
    #[error("TOTP secret of {user:?}: {source}")]
    Seal {
        /// The user whose secret failed (or `check` for the start-up check).
        user: String,
        /// What failed.
        source: SealError,
    },
    /// The TOTP secrets were sealed under another passphrase.
    #[error("the TOTP secrets in the database were sealed under another keystore passphrase")]
    WrongPassphrase,
    /// A sealed secret was found but this process has no passphrase to open it.
    #[error("TOTP secrets are encrypted; start keyguard with the keystore passphrase")]
    NoKey,
}

/// Seals and opens TOTP secrets; holds the derived key (zeroized on drop) if a passphrase was
/// available.
#[derive(Debug)]
pub struct TotpVault {
    key: Option<SealingKey>,
}

fn aad(user: &str) -> Vec<u8> {
    let mut aad = b"keyguard/totp\0".to_vec();
    aad.extend_from_slice(user.as_bytes());
    aad
}

impl TotpVault {
    /// A vault with no key: secrets are stored raw (a PKCS#11 deployment with no keystore
    /// passphrase). Start-up says so.
    pub fn without_key() -> Self {
        TotpVault { key: None }
    }

    /// Derives the key (with the cost recorded in the database, or `kdf` for a new one),
    /// checks it against the stored check value, and seals every raw secret left in `db`.
    pub fn open(db: &StateDb, passphrase: &Passphrase, kdf: KdfParams) -> Result<Self, VaultError> {
        let seal_err = |source| VaultError::Seal {
            user: "check".into(),
            source,
        };
        let key = match db.secret_kdf()? {
            Some(row) => {
                let params = KdfParams {
                    memory_kib: row.memory_kib,
                    iterations: row.iterations,
                    parallelism: row.parallelism,
                };
                let key = SealingKey::derive(passphrase, &params, &row.salt).map_err(seal_err)?;
                key.open(CHECK_AAD, &row.check_value)
                    .map_err(|_| VaultError::WrongPassphrase)?;
                key
            }
            None => {
                let salt = new_salt();
                let key = SealingKey::derive(passphrase, &kdf, &salt).map_err(seal_err)?;
                db.init_secret_kdf(&SecretKdfRow {
                    salt: salt.to_vec(),
                    memory_kib: kdf.memory_kib,
                    iterations: kdf.iterations,
                    parallelism: kdf.parallelism,
                    check_value: key.seal(CHECK_AAD, CHECK_VALUE).map_err(seal_err)?,
                })?;
                // Another process may have won the race to create the row: use its salt.
                if db.secret_kdf()?.is_some_and(|r| r.salt != salt) {
                    return Self::open(db, passphrase, kdf);
                }
                key
            }
        };
        let vault = TotpVault { key: Some(key) };
        let sealed = vault.seal_raw_rows(db)?;
        if sealed > 0 {
            tracing::info!(users = sealed, "sealed TOTP secrets stored in plaintext");
        }
        Ok(vault)
    }

    /// Whether secrets are sealed.
    pub fn seals(&self) -> bool {
        self.key.is_some()
    }

    /// Seals every raw secret in `db`; returns how many.
    pub fn seal_raw_rows(&self, db: &StateDb) -> Result<usize, VaultError> {
        let mut n = 0;
        for user in db.users()?.iter().filter(|u| !u.totp_sealed) {
            n += usize::from(self.seal_row(db, user)?);
        }
        Ok(n)
    }

    fn seal_row(&self, db: &StateDb, user: &UserRecord) -> Result<bool, VaultError> {
        let Some(key) = &self.key else {
            return Ok(false);
        };
        let sealed = key
            .seal(&aad(&user.name), &user.totp_secret)
            .map_err(|source| VaultError::Seal {
                user: user.name.clone(),
                source,
            })?;
        Ok(db.seal_user_secret(&user.name, &sealed)?)
    }

    /// The raw secret of `user` (sealing its row now if it was stored raw).
    pub fn secret(
        &self,
        db: &StateDb,
        user: &UserRecord,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if !user.totp_sealed {
            self.seal_row(db, user)?;
            return Ok(user.totp_secret.clone());
        }
        let key = self.key.as_ref().ok_or(VaultError::NoKey)?;
        key.open(&aad(&user.name), &user.totp_secret)
            .map_err(|source| VaultError::Seal {
                user: user.name.clone(),
                source,
            })
    }

    /// Adds a user with its secret sealed (raw if this vault has no key); false if the name
    /// is taken.
    pub fn add_user(
        &self,
        db: &StateDb,
        name: &str,
        roles: &[String],
        groups: &[String],
        secret: &[u8],
    ) -> Result<bool, VaultError> {
        match &self.key {
            Some(key) => {
                let sealed = key
                    .seal(&aad(name), secret)
                    .map_err(|source| VaultError::Seal {
                        user: name.to_owned(),
                        source,
                    })?;
                Ok(db.insert_user(name, roles, groups, &sealed, true)?)
            }
            None => Ok(db.add_user(name, roles, groups, secret)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    const KDF: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn raw_rows_are_sealed_and_a_wrong_passphrase_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).unwrap();
        let db = store.state_db().unwrap();
        // A row from before sealing existed.
        db.add_user("old", &["admin".into()], &[], &[9u8; 20])
            .unwrap();
        let pass = Passphrase::new("right".into());
        let vault = TotpVault::open(&db, &pass, KDF).unwrap();
        let old = db.user("old").unwrap().unwrap();
        assert!(old.totp_sealed);
        assert_ne!(old.totp_secret.as_slice(), &[9u8; 20]);
        assert_eq!(vault.secret(&db, &old).unwrap().as_slice(), &[9u8; 20]);

        assert!(vault
            .add_user(&db, "new", &["auditor".into()], &[], &[5u8; 20])
            .unwrap());
        let new = db.user("new").unwrap().unwrap();
        assert!(new.totp_sealed);
        assert!(!new.totp_secret.windows(20).any(|w| w == [5u8; 20]));
        assert_eq!(vault.secret(&db, &new).unwrap().as_slice(), &[5u8; 20]);

        // Reopening derives the same key from the stored salt; another passphrase is refused.
        let again = TotpVault::open(&db, &pass, KdfParams::default()).unwrap();
        assert_eq!(again.secret(&db, &new).unwrap().as_slice(), &[5u8; 20]);
        assert!(matches!(
            TotpVault::open(&db, &Passphrase::new("wrong".into()), KDF),
            Err(VaultError::WrongPassphrase)
        ));
        // A sealed secret copied onto another user's row does not open.
        let mut moved = new.clone();
        moved.name = "old".into();
        assert!(vault.secret(&db, &moved).is_err());
        assert!(matches!(
            TotpVault::without_key().secret(&db, &new),
            Err(VaultError::NoKey)
        ));
    }
}
