//! `keyguard eth2`: BLS keys (EIP-2335 keystores, EIP-2333 mnemonic derivation) and the
//! slashing-protection database (EIP-3076 interchange import and export).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use keyguard_eth2::interchange::Interchange;

use crate::backend::software::bls::BlsKeystore;
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub(crate) enum Eth2Command {
    /// BLS validator keys in the software keystore.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The slashing-protection database (EIP-3076 interchange v5).
    Slashing {
        #[command(subcommand)]
        command: SlashingCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Import an EIP-2335 keystore (scrypt or pbkdf2); the password is read from a file.
    ImportKeystore {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// File holding the keystore password.
        #[arg(long)]
        password_file: PathBuf,
        /// The keystore JSON.
        file: PathBuf,
    },
    /// Derive validators from a BIP39 mnemonic read on stdin (EIP-2333/2334,
    /// m/12381/3600/i/0/0).
    ImportMnemonic {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// First validator index.
        #[arg(long, default_value_t = 0)]
        start: u32,
        /// How many validators.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Generate a new random BLS key.
    Generate {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// List the BLS public keys.
    List {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SlashingCommand {
    /// Import an interchange file (must be for the configured network).
    Import {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The interchange JSON.
        file: PathBuf,
    },
    /// Delete records older than `--keep-epochs` epochs before the wall clock; the pruned
    /// slots and epochs stay closed (prune watermarks).
    Prune {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Epochs of history to keep.
        #[arg(long)]
        keep_epochs: u64,
    },
    /// Export every record as a complete interchange file (stdout, or `--out`).
    Export {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Output file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Opens the BLS keys of the configured software keystore.
pub(crate) fn open_bls(config: &Config) -> anyhow::Result<BlsKeystore> {
    super::keys::prepare_data_dir(&config.data.dir)?;
    let dir = config.data.keys_dir();
    if !dir.exists() {
        super::keys::open_keystore(config)?;
    }
    Ok(BlsKeystore::open(
        &dir,
        &super::keys::passphrase(config)?,
        &super::keys::kdf(config),
    )?)
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn network(config: &Config) -> anyhow::Result<keyguard_eth2::Network> {
    let Some(e) = &config.eth2 else {
        bail!("the configuration has no [eth2] table");
    };
    e.network()
        .map_err(|e| anyhow::anyhow!("eth2.network: {e}"))
}

pub(crate) fn run(cmd: Eth2Command) -> anyhow::Result<()> {
    match cmd {
        Eth2Command::Keys { command } => keys(command),
        Eth2Command::Slashing { command } => slashing(command),
    }
}

fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::ImportKeystore {
            config,
            password_file,
            file,
        } => {
            let c = load(&config)?;
            let ks = open_bls(&c)?;
            let pw = zeroize::Zeroizing::new(
                std::fs::read_to_string(&password_file)
                    .with_context(|| format!("reading {}", password_file.display()))?,
            );
            let json =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let pk = ks.import_eip2335(&json, pw.trim_end_matches(['\n', '\r']))?;
            println!("{}", crate::guard::eth2::pubkey_hex(&pk));
        }
        KeysCommand::ImportMnemonic {
            config,
            start,
            count,
        } => {
            let c = load(&config)?;
            let ks = open_bls(&c)?;
            let mut words = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_to_string(&mut words)?;
            let end = start.checked_add(count).context("index range overflows")?;
            for pk in ks.import_mnemonic(words.trim(), "", start..end)? {
                println!("{}", crate::guard::eth2::pubkey_hex(&pk));
            }
        }
        KeysCommand::Generate { config } => {
            let ks = open_bls(&load(&config)?)?;
            println!("{}", crate::guard::eth2::pubkey_hex(&ks.generate()?));
        }
        KeysCommand::List { config } => {
            let ks = open_bls(&load(&config)?)?;
            for pk in ks.public_keys() {
                println!("{}", crate::guard::eth2::pubkey_hex(&pk));
            }
        }
    }
    Ok(())
}

fn slashing(cmd: SlashingCommand) -> anyhow::Result<()> {
    match cmd {
        SlashingCommand::Import { config, file } => {
            let c = load(&config)?;
            let net = network(&c)?;
            let raw =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let parsed =
                Interchange::parse(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let store = Store::open_configured(&c.store, &c.data.database())?;
            let rep = store
                .eth2_slashing()
                .import(&parsed, &net.genesis_validators_root)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "imported {} validators: {} new blocks, {} new attestations",
                rep.validators, rep.blocks, rep.attestations
            );
            store.close()?;
        }
        SlashingCommand::Prune {
            config,
            keep_epochs,
        } => {
            let c = load(&config)?;
            let net = network(&c)?;
            let now = keyguard_chain::clock::now_ms() / 1000;
            let epoch = net.epoch_of(net.slot_at(now)).saturating_sub(keep_epochs);
            let slot = epoch.saturating_mul(net.slots_per_epoch);
            let store = Store::open_configured(&c.store, &c.data.database())?;
            let (b, a) = store
                .eth2_slashing()
                .prune(slot, epoch)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "pruned {b} blocks below slot {slot} and {a} attestations below epoch {epoch}"
            );
            store.close()?;
        }
        SlashingCommand::Export { config, out } => {
            let c = load(&config)?;
            let net = network(&c)?;
            let store = Store::open_configured(&c.store, &c.data.database())?;
            let file = store.eth2_slashing().export(&net.genesis_validators_root)?;
            let text = file.to_json();
            match out {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?
                }
                None => println!("{text}"),
            }
            store.close()?;
        }
    }
    Ok(())
}

/// Builds the eth2 signer of `[eth2]` for the daemon.
pub(crate) fn guard(
    config: &Config,
    store: &Store,
    kill: Arc<crate::access::kill::KillSwitch>,
    approvals: crate::approvals::Approvals,
) -> anyhow::Result<Option<Arc<crate::guard::eth2::Eth2Guard>>> {
    let Some(e) = &config.eth2 else {
        return Ok(None);
    };
    let keys = Arc::new(open_bls(config)?);
    let g = crate::guard::eth2::Eth2Guard::new(
        network(config)?,
        e.policy.clone(),
        keys,
        store
            .eth2_slashing()
            .with_minimal_strategy(e.slashing_strategy == crate::config::SlashingStrategy::Minimal),
        store.audit_log(),
    )
    .with_kill_switch(kill)
    .with_approvals(approvals);
    Ok(Some(Arc::new(g)))
}
