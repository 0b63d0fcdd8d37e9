//! `keyguard keys ...`: list, generate and import keys. Nothing here can print a private key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use keyguard_chain::{KeyId, PublicKey, Scheme};
use zeroize::Zeroizing;

use crate::backend::software::{KdfParams, Passphrase, SoftwareKeystore};
use crate::backend::KeyInfo;
use crate::config::{BackendKind, Config};

/// Default passphrase of a `dev = true` config without `KEYGUARD_PASSPHRASE`.
const DEV_PASSPHRASE: &str = "keyguard-dev-passphrase-not-for-production";

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// List keys: id, scheme, address or public key.
    List {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a new key inside the keystore (or on the HSM token, never extractable).
    Generate {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Where to create it: software or pkcs11 (must match the config; the default), or
        /// aws-kms / openbao (the config names the key and allows creating it).
        #[arg(long)]
        backend: Option<String>,
        /// Name of the new key.
        #[arg(long)]
        id: String,
        /// secp256k1 (Ethereum) or ed25519.
        #[arg(long, default_value = "secp256k1")]
        scheme: String,
    },
    /// Kill switch: stop signing with KEY (or every key) from the very next request, on every
    /// listener, persistently. Needs an operator or admin and a TOTP code.
    Disable {
        /// Key id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        key: Option<String>,
        /// Every key.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: super::admin::AdminArgs,
    },
    /// Sign with KEY (or every key) again. Needs two different admins to run the same command.
    Enable {
        /// Key id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        key: Option<String>,
        /// Every key.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: super::admin::AdminArgs,
    },
    /// Which keys are switched off.
    Status {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
    },
    /// Import an existing secp256k1 key.
    Import {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Name of the imported key.
        #[arg(long)]
        id: String,
        /// Ethereum keystore v3 JSON (geth, eth-account); password from KEYGUARD_IMPORT_PASSWORD.
        #[arg(
            long,
            conflicts_with = "secret_hex_file",
            required_unless_present = "secret_hex_file"
        )]
        keystore_v3: Option<PathBuf>,
        /// A file holding the 32-byte secret as hex.
        #[arg(long)]
        secret_hex_file: Option<PathBuf>,
    },
    /// BIP39/BIP32 seeds (software keystore): generate or import a mnemonic.
    #[command(subcommand)]
    Seed(super::bitcoin::SeedCommand),
    /// The signet challenges a secp256k1 key solves alone (`-signetchallenge`): its public
    /// key, `1 <pk> 1 CHECKMULTISIG` and P2WPKH (docs/bitcoin-signet.md).
    SignetChallenge {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The key.
        #[arg(long)]
        id: String,
    },
    /// Fingerprints, account xpubs and descriptors (BIP84, BIP86) of every seed; public only.
    Descriptors {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// bitcoin, testnet, signet or regtest.
        #[arg(long, default_value = "bitcoin")]
        network: String,
        /// Account number.
        #[arg(long, default_value_t = 0)]
        account: u32,
    },
}

/// systemd credential name (`LoadCredential=keyguard-passphrase:...`) read from
/// `$CREDENTIALS_DIRECTORY` when the environment variable is not set.
const PASSPHRASE_CREDENTIAL: &str = "keyguard-passphrase";

/// The keystore passphrase: from the configured environment variable, else from the systemd
/// credential, else (dev configs only) the well-known default with a warning that cannot be
/// missed.
pub(crate) fn passphrase(config: &Config) -> anyhow::Result<Passphrase> {
    if let Ok(p) = std::env::var(&config.keystore.passphrase_env) {
        if !p.is_empty() {
            return Ok(Passphrase::new(p));
        }
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(PASSPHRASE_CREDENTIAL);
        if path.exists() {
            let text = Zeroizing::new(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading credential {}", path.display()))?,
            );
            let trimmed = text.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                !trimmed.is_empty(),
                "credential {} is empty",
                path.display()
            );
            return Ok(Passphrase::new(trimmed.to_string()));
        }
    }
    if config.dev {
        eprintln!(
            "keyguard: WARNING: {} is not set; this dev config uses the default passphrase. \
             Never use it for keys that hold value.",
            config.keystore.passphrase_env
        );
        tracing::warn!("dev default keystore passphrase in use");
        return Ok(Passphrase::new(DEV_PASSPHRASE.to_string()));
    }
    anyhow::bail!(
        "{} is not set and no systemd credential {PASSPHRASE_CREDENTIAL} was given: the keystore \
         passphrase is required (only dev configs have a default)",
        config.keystore.passphrase_env
    )
}

/// KDF parameters for newly written key files.
pub(crate) fn kdf(config: &Config) -> KdfParams {
    let mut params = KdfParams::default();
    if let Some(m) = config.keystore.kdf_memory_kib {
        params.memory_kib = m;
    }
    if let Some(t) = config.keystore.kdf_iterations {
        params.iterations = t;
    }
    params
}

/// Opens the software keystore of a config.
pub(crate) fn open_keystore(config: &Config) -> anyhow::Result<SoftwareKeystore> {
    let dir = config.data.keys_dir();
    prepare_data_dir(&config.data.dir)?;
    Ok(SoftwareKeystore::open(
        &dir,
        &passphrase(config)?,
        kdf(config),
    )?)
}

/// Creates the data directory private to the service user.
pub(crate) fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    Ok(())
}

/// One line describing a key, as `start` and `keys list` print it.
pub(crate) fn describe(key: &KeyInfo) -> String {
    let public = match &key.public_key {
        pk @ PublicKey::Secp256k1(_) => keyguard_evm::address_of(pk)
            .map(|a| a.to_checksum(None))
            .unwrap_or_default(),
        PublicKey::Ed25519(b) => hex::encode(b),
    };
    format!("{} {} {}", key.id, key.scheme(), public)
}

fn parse_scheme(s: &str) -> anyhow::Result<Scheme> {
    match s {
        "secp256k1" => Ok(Scheme::Secp256k1),
        "ed25519" => Ok(Scheme::Ed25519),
        other => anyhow::bail!("unknown scheme {other:?}: use secp256k1 or ed25519"),
    }
}

/// Opens the configured PKCS#11 token as a backend (login, key discovery, public keys).
#[cfg(feature = "pkcs11")]
pub(crate) fn open_pkcs11(
    config: &Config,
) -> anyhow::Result<crate::backend::pkcs11::Pkcs11Backend> {
    use crate::backend::pkcs11::{settings_from_config, Pkcs11Backend};
    let p = pkcs11_config(config)?;
    let settings = settings_from_config(p)?;
    Ok(Pkcs11Backend::open(
        settings,
        p.sessions as usize,
        std::time::Duration::from_millis(p.timeout_ms),
    )?)
}

/// A build without the feature says so instead of pretending the backend does not exist.
#[cfg(not(feature = "pkcs11"))]
pub(crate) fn open_pkcs11(
    _config: &Config,
) -> anyhow::Result<crate::backend::software::SoftwareKeystore> {
    anyhow::bail!("this keyguard was built without the `pkcs11` feature")
}

#[cfg(feature = "pkcs11")]
fn pkcs11_config(config: &Config) -> anyhow::Result<&crate::config::Pkcs11Config> {
    config
        .keystore
        .pkcs11
        .as_ref()
        .context("the config has no [keystore.pkcs11] table")
}

#[cfg(feature = "pkcs11")]
fn pkcs11_list(config: &Config) -> anyhow::Result<()> {
    use crate::backend::pkcs11::{list_keys, settings_from_config};
    let p = pkcs11_config(config)?;
    let keys = list_keys(&settings_from_config(p)?)?;
    if keys.is_empty() {
        println!("no keys on token {:?}", p.token_label);
    }
    for k in keys {
        println!("{}", describe(&k));
    }
    Ok(())
}

#[cfg(feature = "pkcs11")]
fn pkcs11_keys(config: &Config) -> anyhow::Result<Vec<KeyInfo>> {
    use crate::backend::pkcs11::{list_keys, settings_from_config};
    Ok(list_keys(&settings_from_config(pkcs11_config(config)?)?)?)
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_keys(_config: &Config) -> anyhow::Result<Vec<KeyInfo>> {
    anyhow::bail!("this keyguard was built without the `pkcs11` feature")
}

#[cfg(feature = "pkcs11")]
fn pkcs11_generate(config: &Config, id: KeyId, scheme: Scheme) -> anyhow::Result<KeyInfo> {
    use crate::backend::pkcs11::{generate_key, settings_from_config};
    let settings = settings_from_config(pkcs11_config(config)?)?;
    Ok(generate_key(&settings, &id, scheme)?)
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_list(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("this keyguard was built without the `pkcs11` feature")
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_generate(_config: &Config, _id: KeyId, _scheme: Scheme) -> anyhow::Result<KeyInfo> {
    anyhow::bail!("this keyguard was built without the `pkcs11` feature")
}

pub(crate) fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Seed(command) => super::bitcoin::seed(command),
        KeysCommand::Descriptors {
            config,
            network,
            account,
        } => super::bitcoin::descriptors(&config, &network, account),
        KeysCommand::Disable { key, all, admin } => {
            super::admin::key_switch("keys.disable", key, all, &admin)
        }
        KeysCommand::Enable { key, all, admin } => {
            super::admin::key_switch("keys.enable", key, all, &admin)
        }
        KeysCommand::Status { admin } => {
            super::admin::key_switch("keys.status", None, false, &admin)
        }
        KeysCommand::SignetChallenge { config, id } => {
            let config = Config::load(&config)?;
            let id = KeyId::new(id)?;
            let keys = if config.keystore.backend == BackendKind::Pkcs11 {
                pkcs11_keys(&config)?
            } else {
                SoftwareKeystore::list(&config.data.keys_dir())?
            };
            let key = keys
                .into_iter()
                .find(|k| k.id == id)
                .with_context(|| format!("no key {id}"))?;
            let PublicKey::Secp256k1(point) = key.public_key else {
                anyhow::bail!("{id} is not a secp256k1 key");
            };
            let pk = keyguard_bitcoin::bitcoin::secp256k1::PublicKey::from_slice(&point)?;
            let compressed = keyguard_bitcoin::bitcoin::CompressedPublicKey(pk);
            println!("public_key {compressed}");
            println!(
                "multisig {}",
                hex::encode([&[0x51, 0x21][..], &pk.serialize(), &[0x51, 0xae]].concat())
            );
            println!(
                "p2wpkh {}",
                keyguard_bitcoin::bitcoin::ScriptBuf::new_p2wpkh(&compressed.wpubkey_hash())
                    .to_hex_string()
            );
            Ok(())
        }
        KeysCommand::List { config } => {
            let config = Config::load(&config)?;
            for (backend, k) in super::cloud::list(&config)? {
                println!("{} ({backend})", describe(&k));
            }
            if config.keystore.backend == BackendKind::Pkcs11 {
                return pkcs11_list(&config);
            }
            let dir = config.data.keys_dir();
            let keys = if dir.exists() {
                SoftwareKeystore::list(&dir)?
            } else {
                Vec::new()
            };
            let seeds = super::bitcoin::list_seeds(&config)?;
            if keys.is_empty() && seeds.is_empty() {
                println!("no keys in {}", dir.display());
            }
            for k in keys {
                println!("{}", describe(&k));
            }
            for s in seeds {
                println!("{s}");
            }
            Ok(())
        }
        KeysCommand::Generate {
            config,
            backend,
            id,
            scheme,
        } => {
            let config = Config::load(&config)?;
            let configured = config.keystore.backend;
            if let Some(cloud @ ("azure-kv" | "gcp-kms")) = backend.as_deref() {
                anyhow::bail!(
                    "--backend {cloud}: keyguard does not create {cloud} keys; create the key in the \
                     service and name it in the config (docs/backends.md)"
                );
            }
            if let Some(cloud @ ("aws-kms" | "openbao")) = backend.as_deref() {
                let (id, scheme) = (KeyId::new(id)?, parse_scheme(&scheme)?);
                let info = if cloud == "aws-kms" {
                    super::cloud::generate_aws(&config, id, scheme)?
                } else {
                    super::cloud::generate_openbao(&config, id, scheme)?
                };
                println!("created {} ({cloud})", describe(&info));
                return Ok(());
            }
            if let Some(b) = backend.filter(|b| b != configured.name()) {
                anyhow::bail!(
                    "--backend {b}: the config uses backend = \"{}\"",
                    configured.name()
                );
            }
            let (id, scheme) = (KeyId::new(id)?, parse_scheme(&scheme)?);
            let info = match configured {
                BackendKind::Software => open_keystore(&config)?.generate(id, scheme)?,
                BackendKind::Pkcs11 => pkcs11_generate(&config, id, scheme)?,
            };
            println!("created {}", describe(&info));
            Ok(())
        }
        KeysCommand::Import {
            config,
            id,
            keystore_v3,
            secret_hex_file,
        } => {
            let config = Config::load(&config)?;
            if config.keystore.backend == BackendKind::Pkcs11 {
                // Importing would put a key on the HSM that existed outside it first.
                anyhow::bail!(
                    "keys import is for the software keystore; generate HSM keys on the token"
                );
            }
            let store = open_keystore(&config)?;
            let id = KeyId::new(id)?;
            let info = match (keystore_v3, secret_hex_file) {
                (Some(path), _) => {
                    let password = Zeroizing::new(
                        std::env::var("KEYGUARD_IMPORT_PASSWORD")
                            .context("KEYGUARD_IMPORT_PASSWORD must hold the keystore password")?,
                    );
                    store.import_keystore_v3(id, &path, &password)?
                }
                (None, Some(path)) => {
                    let text = Zeroizing::new(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    );
                    let hex_text = text.trim().trim_start_matches("0x");
                    let mut secret = Zeroizing::new([0u8; 32]);
                    hex::decode_to_slice(hex_text, secret.as_mut()).map_err(|_| {
                        anyhow::anyhow!("{}: expected 32 bytes of hex", path.display())
                    })?;
                    store.import_secp256k1(id, secret)?
                }
                (None, None) => anyhow::bail!("give --keystore-v3 or --secret-hex-file"),
            };
            println!("imported {}", describe(&info));
            Ok(())
        }
    }
}
