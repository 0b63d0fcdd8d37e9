//! Clients managed through the admin API. Only the SHA-256 of a bearer token is kept; the
//! scope is stored as JSON and interpreted by `access::clients`.

use super::db::{vals, Row};
use super::{now_ms, StateDb, StoreError};

/// A managed client as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// Name used in logs and the audit log.
    pub name: String,
    /// SHA-256 of its bearer token.
    pub token_sha256: [u8; 32],
    /// The scope, as JSON.
    pub scope: String,
    pub created_ms: i64,
    pub created_by: String,
    pub updated_ms: i64,
    pub updated_by: String,
}

const COLUMNS: &str = "name, token_sha256, scope, created_ms, created_by, updated_ms, updated_by";

fn read(r: &Row) -> Result<ClientRow, StoreError> {
    let hash: Vec<u8> = r.get(1)?;
    Ok(ClientRow {
        name: r.get(0)?,
        // A hash of another length can only come from an edited file; it matches no token.
        token_sha256: hash.try_into().unwrap_or([0u8; 32]),
        scope: r.get(2)?,
        created_ms: r.get(3)?,
        created_by: r.get(4)?,
        updated_ms: r.get(5)?,
        updated_by: r.get(6)?,
    })
}

impl StateDb {
    /// Every managed client, by name.
    pub fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        self.rows(&format!("SELECT {COLUMNS} FROM clients ORDER BY name"), &[])?
            .iter()
            .map(read)
            .collect()
    }

    /// One managed client.
    pub fn client(&self, name: &str) -> Result<Option<ClientRow>, StoreError> {
        self.rows(
            &format!("SELECT {COLUMNS} FROM clients WHERE name = $1"),
            vals![name],
        )?
        .first()
        .map(read)
        .transpose()
    }

    /// Adds a client; false if the name (or, never in practice, the token hash) is taken.
    pub fn insert_client(
        &self,
        name: &str,
        token_sha256: &[u8; 32],
        scope: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = self.exec(
            "INSERT INTO clients (name, token_sha256, scope, created_ms, created_by, \
             updated_ms, updated_by) VALUES ($1, $2, $3, $4, $5, $4, $5) ON CONFLICT DO NOTHING",
            vals![name, token_sha256, scope, now, by],
        )?;
        Ok(n == 1)
    }

    /// Replaces a client's scope; false if there is no such client.
    pub fn update_client_scope(
        &self,
        name: &str,
        scope: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE clients SET scope = $2, updated_ms = $3, updated_by = $4 WHERE name = $1",
            vals![name, scope, now_ms(), by],
        )?;
        Ok(n == 1)
    }

    /// Replaces a client's token hash (the old token stops working); false if no such client.
    pub fn rotate_client_token(
        &self,
        name: &str,
        token_sha256: &[u8; 32],
        by: &str,
    ) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE clients SET token_sha256 = $2, updated_ms = $3, updated_by = $4 \
             WHERE name = $1",
            vals![name, token_sha256, now_ms(), by],
        )?;
        Ok(n == 1)
    }

    /// Removes a client; true if one was removed.
    pub fn remove_client(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.exec("DELETE FROM clients WHERE name = $1", vals![name])? == 1)
    }
}
