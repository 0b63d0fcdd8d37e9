//! Key management of the eth2 signer (Web3Signer's `POST /reload` and the keymanager
//! `/eth/v1/keystores` API): list, import with an EIP-3076 file, delete with export. Imports
//! write the slashing history before the key can sign; a deleted key stops signing at once and
//! its history stays in the store (a key imported again is still protected).

use keyguard_eth2::interchange::Interchange;

use super::{Eth2Guard, Eth2Refusal, Status};

/// Per-key outcome, as the keymanager API names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    /// `imported`, `duplicate`, `deleted`, `not_active`, `not_found`, `error`.
    pub status: &'static str,
    /// Why (errors only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Held for the whole of a keystore import (see `import_keys`).
pub(super) static IMPORTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn st(status: &'static str, message: impl Into<String>) -> KeyStatus {
    KeyStatus {
        status,
        message: message.into(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Eth2Refusal {
    Eth2Refusal::new(
        Status::Unavailable,
        keyguard_chain::rules::eth2::STORE_UNAVAILABLE,
        "keystores",
        e.to_string(),
    )
}

impl Eth2Guard {
    /// Re-reads the BLS key file; the number of keys now loaded.
    pub async fn reload_keys(&self) -> Result<usize, Eth2Refusal> {
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || keys.reload())
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
    }

    /// Every key with its origin (derivation path, `eip2335`, `generated`).
    pub fn list_keys(&self) -> Vec<([u8; 48], String)> {
        self.keys.list()
    }

    /// Imports EIP-2335 keystores (one password each), after the optional interchange file
    /// (which must be for this network; refused as a whole otherwise).
    pub async fn import_keys(
        &self,
        keystores: Vec<String>,
        passwords: Vec<String>,
        slashing: Option<String>,
    ) -> Result<Vec<KeyStatus>, Eth2Refusal> {
        // One import at a time: each keystore's KDF may take up to 1 GiB (scrypt) and seconds
        // of a core, so concurrent imports would multiply both.
        let _one = IMPORTING.lock().await;
        if keystores.len() != passwords.len() {
            return Err(Eth2Refusal::new(
                Status::BadRequest,
                keyguard_chain::rules::common::REQUEST_INVALID,
                "passwords",
                "one password per keystore",
            ));
        }
        if let Some(file) = slashing {
            let parsed = Interchange::parse(file.as_bytes()).map_err(|e| {
                Eth2Refusal::new(
                    Status::BadRequest,
                    e.rule,
                    &format!("slashing_protection.{}", e.field),
                    e.reason,
                )
            })?;
            let (store, gvr) = (self.slashing.clone(), self.network.genesis_validators_root);
            tokio::task::spawn_blocking(move || store.import(&parsed, &gvr))
                .await
                .map_err(unavailable)?
                .map_err(|e| match e {
                    crate::store::eth2_slashing::SlashingError::Refused { rule, reason } => {
                        Eth2Refusal::new(Status::BadRequest, rule, "slashing_protection", reason)
                    }
                    crate::store::eth2_slashing::SlashingError::Store(e) => unavailable(e),
                })?;
        }
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || {
            keystores
                .iter()
                .zip(&passwords)
                .map(|(ks, pw)| match keys.import_eip2335(ks.as_bytes(), pw) {
                    Ok(_) => st("imported", ""),
                    Err(crate::backend::software::KeystoreError::Exists(_)) => st("duplicate", ""),
                    Err(e) => st("error", e.to_string()),
                })
                .collect()
        })
        .await
        .map_err(unavailable)
    }

    /// Deletes keys; their slashing history (kept in the store) as an interchange file.
    pub async fn delete_keys(
        &self,
        pks: Vec<[u8; 48]>,
    ) -> Result<(Vec<KeyStatus>, String), Eth2Refusal> {
        let (keys, store, gvr) = (
            self.keys.clone(),
            self.slashing.clone(),
            self.network.genesis_validators_root,
        );
        tokio::task::spawn_blocking(move || {
            let history = store.export_keys(&gvr, &pks).map_err(unavailable)?;
            let statuses = pks
                .iter()
                .map(|pk| match keys.remove(pk) {
                    Ok(true) => st("deleted", ""),
                    Ok(false) if history.data.iter().any(|h| &h.pubkey == pk) => {
                        st("not_active", "")
                    }
                    Ok(false) => st("not_found", ""),
                    Err(e) => st("error", e.to_string()),
                })
                .collect();
            Ok((statuses, history.to_json()))
        })
        .await
        .map_err(unavailable)?
    }
}
