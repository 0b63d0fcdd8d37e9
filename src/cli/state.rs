//! `keyguard state`: move a validator's double-sign watermark in from a file signer (CometBFT
//! FilePV or tmkms), show it, and export it back in FilePV form; `show` lists signet block
//! watermarks too.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use keyguard_cometbft::state_file::{self, StateFormat};

use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub(crate) enum StateCommand {
    /// Import priv_validator_state.json; refuses to lower an existing watermark.
    Import {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// CometBFT chain id.
        #[arg(long)]
        chain: String,
        /// Key id (default: the key of this chain's [[validators]] entries).
        #[arg(long)]
        key: Option<String>,
        /// Force the file format instead of recognising it.
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// The state file.
        file: PathBuf,
    },
    /// Show stored watermarks.
    Show {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Only this chain.
        #[arg(long)]
        chain: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a watermark as CometBFT's priv_validator_state.json.
    Export {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// CometBFT chain id.
        #[arg(long)]
        chain: String,
        /// Key id (default: the key of this chain's [[validators]] entries).
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FormatArg {
    Cometbft,
    Tmkms,
}

fn key_for(config: &Config, chain: &str, key: Option<String>) -> anyhow::Result<String> {
    if let Some(k) = key {
        return Ok(k);
    }
    let mut keys: Vec<&str> = config
        .validators
        .iter()
        .filter(|v| v.chain_id == chain)
        .map(|v| v.key.as_str())
        .collect();
    keys.sort();
    keys.dedup();
    match keys.as_slice() {
        [k] => Ok((*k).to_owned()),
        [] => bail!("no [[validators]] entry for chain {chain:?}; pass --key"),
        _ => bail!(
            "chain {chain:?} has several keys ({}); pass --key",
            keys.join(", ")
        ),
    }
}

fn open(config: &Path) -> anyhow::Result<(Config, Store)> {
    let config = Config::load(config)?;
    let store = Store::open_configured(&config.store, &config.data.database())
        .with_context(|| format!("opening {}", config.data.database().display()))?;
    Ok((config, store))
}

pub(crate) fn run(command: StateCommand) -> anyhow::Result<()> {
    match command {
        StateCommand::Import {
            config,
            chain,
            key,
            format,
            file,
        } => {
            let (config, store) = open(&config)?;
            let key = key_for(&config, &chain, key)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let format = format.map(|f| match f {
                FormatArg::Cometbft => StateFormat::CometBft,
                FormatArg::Tmkms => StateFormat::Tmkms,
            });
            let (format, state) =
                state_file::parse(&text, format).with_context(|| format!("{}", file.display()))?;
            let source = format!("import:{format:?}:{}", file.display());
            store
                .watermarks()
                .import(&chain, &key, &state, &source)
                .context("import refused")?;
            println!(
                "keyguard: imported {chain} {key} height {} round {} step {:?} ({format:?})",
                state.height, state.round, state.step
            );
            Ok(())
        }
        StateCommand::Show {
            config,
            chain,
            json,
        } => {
            let (_, store) = open(&config)?;
            let rows = store.watermarks().list()?;
            let rows = rows
                .into_iter()
                .filter(|r| chain.as_deref().is_none_or(|c| c == r.chain_id));
            let mut out = Vec::new();
            for r in rows {
                let ts = state_file::last_timestamp(&r.state);
                if json {
                    out.push(serde_json::json!({
                        "chain_id": r.chain_id,
                        "key": r.key_id,
                        "height": r.state.height,
                        "round": r.state.round,
                        "step": r.state.step,
                        "block_id": hex::encode_upper(&r.state.block_id),
                        "timestamp": ts.map(|t| format!("{}.{:09}", t.seconds, t.nanos)),
                        "source": r.source,
                        "updated_ms": r.updated_ms,
                        "released_height": r.released.0,
                    }));
                } else {
                    println!(
                        "{} {} height {} round {} step {:?} source {}",
                        r.chain_id, r.key_id, r.state.height, r.state.round, r.state.step, r.source
                    );
                }
            }
            // Signet block watermarks (`--chain signet`; docs/bitcoin-signet.md).
            let signet = store.signet_tips()?;
            for r in signet
                .iter()
                .filter(|_| chain.as_deref().is_none_or(|c| c == "signet"))
            {
                if json {
                    out.push(serde_json::json!({
                        "chain_id": "signet",
                        "challenge": r.challenge,
                        "key": r.key_id,
                        "height": r.tip.height,
                        "max_height": r.tip.max_height,
                        "commitment": r.tip.commitment,
                        "prev_block": r.tip.prev_hash.to_string(),
                        "time": r.tip.time,
                    }));
                } else {
                    println!(
                        "signet {} height {} max_height {} commitment {} challenge {}",
                        r.key_id, r.tip.height, r.tip.max_height, r.tip.commitment, r.challenge
                    );
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(())
        }
        StateCommand::Export { config, chain, key } => {
            let (config, store) = open(&config)?;
            let key = key_for(&config, &chain, key)?;
            let Some(row) = store.watermarks().load(&chain, &key)? else {
                bail!("no state for {chain} / {key}");
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&state_file::export_cometbft(&row.state))?
            );
            Ok(())
        }
    }
}
