//! `[keystore.pkcs11]`: where the HSM is and how keyguard logs in to it.
//!
//! The model is plain data and always compiled, so a config names a PKCS#11 token even in a
//! build without the `pkcs11` feature (which then refuses to start with a clear message rather
//! than a parse error). The user PIN is never inline: it comes from an environment variable or
//! a file readable only by the service user, so a config file can be shared or committed.

use std::path::PathBuf;

use serde::Deserialize;

/// The PKCS#11 token holding the keys.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 library (`/usr/lib/softhsm/libsofthsm2.so`).
    pub library: PathBuf,
    /// The token's label. Slot numbers change when tokens are (re)initialised; labels do not.
    pub token_label: String,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// File holding the user PIN (one line; must not be readable by group or others).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Sessions opened for signing: at most this many signatures are in flight on the token.
    #[serde(default = "default_sessions")]
    pub sessions: u32,
    /// Use private keys the token marks extractable or not sensitive. Such a key may exist
    /// outside the HSM, which defeats the point of holding it in one.
    #[serde(default)]
    pub allow_extractable: bool,
    /// Key labels to use. Each must exist on the token. Empty: every private key whose label
    /// is a valid key id.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Keys chosen by `CKA_ID` instead of label, as `key id = "hex CKA_ID"`: for tokens whose
    /// keys were made by other tools with labels that are not usable key ids (or none). Each
    /// must exist. With `keys` or `key_ids` set, only the keys they name are used.
    #[serde(default)]
    pub key_ids: std::collections::BTreeMap<String, String>,
    /// A request waiting longer than this for a session or for the token fails (`-32007`)
    /// instead of hanging.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_sessions() -> u32 {
    4
}

fn default_timeout_ms() -> u64 {
    5000
}

/// Where the user PIN comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable.
    Env(String),
    /// A file.
    File(PathBuf),
}

impl Pkcs11Config {
    /// The PIN source, or why the config does not name exactly one.
    pub fn pin_source(&self) -> Result<PinSource, &'static str> {
        match (&self.pin_env, &self.pin_file) {
            (Some(v), None) if !v.is_empty() => Ok(PinSource::Env(v.clone())),
            (None, Some(p)) => Ok(PinSource::File(p.clone())),
            (Some(_), Some(_)) => Err("give pin_env or pin_file, not both"),
            _ => Err("give pin_env (an environment variable) or pin_file; the PIN is never inline"),
        }
    }

    /// Problems in this table as `(key, reason)`, keys relative to `keystore.pkcs11`.
    pub(super) fn problems(&self) -> Option<(&'static str, String)> {
        if let Err(reason) = self.pin_source() {
            return Some(("pin_env", reason.into()));
        }
        if self.token_label.is_empty() || self.token_label.len() > 32 {
            return Some(("token_label", "must be 1 to 32 characters".into()));
        }
        if !(1..=64).contains(&self.sessions) {
            return Some(("sessions", "must be between 1 and 64".into()));
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Some(("timeout_ms", "must be between 100 and 600000".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.keys {
            if let Err(e) = keyguard_chain::KeyId::new(k.as_str()) {
                return Some(("keys", e.to_string()));
            }
            if !seen.insert(k) {
                return Some(("keys", format!("{k:?} is listed twice")));
            }
        }
        let mut ckids = std::collections::HashSet::new();
        for (k, ckid) in &self.key_ids {
            if let Err(e) = keyguard_chain::KeyId::new(k.as_str()) {
                return Some(("key_ids", e.to_string()));
            }
            if seen.contains(k) {
                return Some(("key_ids", format!("{k:?} is also in keys")));
            }
            match hex::decode(ckid.strip_prefix("0x").unwrap_or(ckid)) {
                Ok(b) if !b.is_empty() => {
                    if !ckids.insert(b) {
                        return Some(("key_ids", format!("CKA_ID {ckid} is given twice")));
                    }
                }
                _ => return Some(("key_ids", format!("{k}: {ckid:?} is not a hex CKA_ID"))),
            }
        }
        None
    }
}
