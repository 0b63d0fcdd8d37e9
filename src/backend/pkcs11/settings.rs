//! From `[keystore.pkcs11]` to [`TokenSettings`]: read the PIN from its source, refusing a PIN
//! file others can read (a PIN next to the HSM is only as safe as that file).

use std::os::unix::fs::PermissionsExt;

use cryptoki::types::AuthPin;
use keyguard_chain::KeyId;
use zeroize::Zeroizing;

use super::token::TokenSettings;
use super::Pkcs11Error;
use crate::config::{PinSource, Pkcs11Config};

/// Resolves the config into connection settings, reading the PIN now.
pub fn settings_from_config(config: &Pkcs11Config) -> Result<TokenSettings, Pkcs11Error> {
    let source = config
        .pin_source()
        .map_err(|reason| Pkcs11Error::Pin(reason.to_string()))?;
    let pin = read_pin(&source)?;
    let wanted = config
        .keys
        .iter()
        .map(|k| KeyId::new(k.as_str()).map_err(|e| Pkcs11Error::Pin(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let by_ckid = config
        .key_ids
        .iter()
        .map(|(k, ckid)| {
            let id = KeyId::new(k.as_str()).map_err(|e| Pkcs11Error::Pin(e.to_string()))?;
            let ckid = hex::decode(ckid.strip_prefix("0x").unwrap_or(ckid))
                .map_err(|e| Pkcs11Error::Pin(format!("key_ids.{k}: {e}")))?;
            Ok((id, ckid))
        })
        .collect::<Result<Vec<_>, Pkcs11Error>>()?;
    Ok(TokenSettings {
        library: config.library.clone(),
        token_label: config.token_label.clone(),
        pin,
        allow_extractable: config.allow_extractable,
        wanted,
        by_ckid,
    })
}

fn read_pin(source: &PinSource) -> Result<AuthPin, Pkcs11Error> {
    let pin = match source {
        PinSource::Env(var) => Zeroizing::new(
            std::env::var(var)
                .map_err(|_| Pkcs11Error::Pin(format!("environment variable {var} is not set")))?,
        ),
        PinSource::File(path) => {
            let shown = path.display();
            let meta =
                std::fs::metadata(path).map_err(|e| Pkcs11Error::Pin(format!("{shown}: {e}")))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(Pkcs11Error::Pin(format!(
                    "{shown} is readable by group or others; chmod 600 it"
                )));
            }
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| Pkcs11Error::Pin(format!("{shown}: {e}")))?,
            );
            Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string())
        }
    };
    if pin.is_empty() {
        return Err(Pkcs11Error::Pin("the PIN is empty".into()));
    }
    Ok(AuthPin::from(pin.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(pin_file: PathBuf) -> Pkcs11Config {
        toml::from_str(&format!(
            "library = \"/x.so\"\ntoken_label = \"t\"\npin_file = {:?}\n",
            pin_file
        ))
        .unwrap()
    }

    #[test]
    fn pin_file_must_be_private_and_non_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = settings_from_config(&config(path.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("1234"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = settings_from_config(&config(path.clone())).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(s.pin.expose_secret(), "1234");
        assert!(!format!("{s:?}").contains("1234"));
        std::fs::write(&path, "\n").unwrap();
        assert!(settings_from_config(&config(path)).is_err());
    }
}
