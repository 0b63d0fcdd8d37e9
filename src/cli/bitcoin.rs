//! Bitcoin commands: seeds (`keys seed generate|import`), `keys descriptors`, and
//! `btc-signer`, Bitcoin Core's external signer interface forwarding to a running daemon.
//! Nothing here prints private material; a new seed's words go only to an explicitly named
//! new file (mode 0600) for an offline backup.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::{Args, Subcommand};
use keyguard_bitcoin::bitcoin::{Network, NetworkKind};
use keyguard_bitcoin::wallet::{account_path, Account, ScriptKind, Wallet};
use keyguard_chain::KeyId;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::keys::open_keystore;
use crate::backend::software::SeedInfo;
use crate::backend::KeyBackend;
use crate::config::{BackendKind, Config};

#[derive(Debug, Subcommand)]
pub(crate) enum SeedCommand {
    /// A new seed from a fresh 24-word BIP39 mnemonic.
    Generate {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Name of the seed; its Ethereum key becomes `<id>-eth`.
        #[arg(long)]
        id: String,
        /// Write the mnemonic to this new file (0600) for an offline backup; otherwise it is
        /// never shown and the encrypted keystore is the only copy.
        #[arg(long)]
        backup_file: Option<PathBuf>,
    },
    /// Import a BIP39 mnemonic from a file; BIP39 passphrase from KEYGUARD_BIP39_PASSPHRASE.
    Import {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Name of the seed.
        #[arg(long)]
        id: String,
        /// File holding the words.
        #[arg(long)]
        mnemonic_file: PathBuf,
    },
}

fn describe_seed(s: &SeedInfo) -> String {
    let eth = keyguard_evm::address_of(&s.eth_public_key)
        .map(|a| a.to_checksum(None))
        .unwrap_or_default();
    format!(
        "{} bip32-seed fingerprint {} (ethereum key {} {eth})",
        s.id, s.fingerprint, s.eth_key
    )
}

/// Lines for `keys list`: seeds, read without decrypting.
pub(crate) fn list_seeds(config: &Config) -> anyhow::Result<Vec<String>> {
    let seeds = crate::backend::software::SoftwareKeystore::list_seeds(&config.data.keys_dir())?;
    Ok(seeds.iter().map(describe_seed).collect())
}

pub(crate) fn seed(command: SeedCommand) -> anyhow::Result<()> {
    let (config, id) = match &command {
        SeedCommand::Generate { config, id, .. } | SeedCommand::Import { config, id, .. } => {
            (Config::load(config)?, KeyId::new(id.clone())?)
        }
    };
    anyhow::ensure!(
        config.keystore.backend == BackendKind::Software,
        "BIP32 seeds live in the software keystore; HSM keys are single (non-HD) keys"
    );
    let store = open_keystore(&config)?;
    let info = match command {
        SeedCommand::Generate { backup_file, .. } => {
            // Open the backup file first: failing after the seed exists would lose the words.
            let file = backup_file
                .map(|p| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&p)
                        .with_context(|| format!("creating {}", p.display()))
                })
                .transpose()?;
            let (info, words) = store.generate_seed(id)?;
            if let Some(mut f) = file {
                f.write_all(format!("{}\n", words.as_str()).as_bytes())?;
                f.sync_all()?;
            }
            info
        }
        SeedCommand::Import { mnemonic_file, .. } => {
            let words = Zeroizing::new(
                std::fs::read_to_string(&mnemonic_file)
                    .with_context(|| format!("reading {}", mnemonic_file.display()))?,
            );
            let pass =
                Zeroizing::new(std::env::var("KEYGUARD_BIP39_PASSPHRASE").unwrap_or_default());
            store.import_mnemonic(id, &words, &pass)?
        }
    };
    println!("created {}", describe_seed(&info));
    Ok(())
}

/// `keys descriptors`: fingerprint, account xpubs and descriptors of every seed.
pub(crate) fn descriptors(
    config: &std::path::Path,
    network: &str,
    account: u32,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let network = Network::from_str(network).map_err(|e| anyhow::anyhow!("--network: {e}"))?;
    let store = open_keystore(&config)?;
    for (id, fingerprint) in store.seeds() {
        let mut accounts = Vec::new();
        for kind in [ScriptKind::P2wpkh, ScriptKind::P2tr] {
            let path = account_path(kind, network, account).context("account out of range")?;
            let xpub = store.account_xpub(&id, &path, NetworkKind::from(network))?;
            accounts.push(Account { kind, path, xpub });
        }
        let wallet = Wallet {
            fingerprint,
            network,
            accounts,
            max_index: 0,
            change_gap: 0,
            single: None,
        };
        println!("{id} fingerprint {fingerprint} network {network}");
        for (a, (receive, internal)) in wallet.accounts.iter().zip(wallet.descriptors()) {
            println!("  {:?} {} {}", a.kind, a.path, a.xpub);
            println!("    receive  {receive}");
            println!("    internal {internal}");
        }
    }
    Ok(())
}

/// Bitcoin Core's external signer interface (`-signer=keyguard-btc-signer`), forwarding to a
/// running daemon's signing listener.
#[derive(Debug, Args)]
pub(crate) struct BtcSignerArgs {
    /// Master fingerprint Core selected (from `enumerate`).
    #[arg(long)]
    fingerprint: Option<String>,
    /// Core's chain name: main, test, testnet4, signet, regtest.
    #[arg(long, default_value = "main")]
    chain: String,
    /// The daemon's signing listener.
    #[arg(long, env = "KEYGUARD_URL", default_value = "http://127.0.0.1:8550")]
    url: String,
    /// Seed id, when the daemon holds several.
    #[arg(long, env = "KEYGUARD_BTC_KEY")]
    key: Option<String>,
    /// Bearer token (listeners with `auth = "bearer"`).
    #[arg(long, env = "KEYGUARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: SignerCommand,
}

#[derive(Debug, Subcommand)]
enum SignerCommand {
    /// List the signer (one entry per seed's fingerprint).
    Enumerate,
    /// Receive and internal descriptors.
    Getdescriptors {
        /// Account number.
        #[arg(long, default_value_t = 0)]
        account: u32,
    },
    /// Sign the base64 PSBT on stdin.
    Signtx,
    /// keyguard has no display; refused with an explanation.
    Displayaddress {
        /// Descriptor of the address.
        #[arg(long)]
        desc: String,
    },
}

fn rpc(args: &BtcSignerArgs, method: &str, params: Value) -> anyhow::Result<Value> {
    use jsonrpsee::core::client::ClientT;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut headers = http::HeaderMap::new();
        if let Some(t) = &args.token {
            headers.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse()?);
        }
        let client = jsonrpsee::http_client::HttpClientBuilder::default()
            .set_headers(headers)
            .build(&args.url)?;
        let result: Value = client
            .request(method, jsonrpsee::rpc_params![params])
            .await
            .map_err(|e| anyhow::anyhow!("{method}: {e}"))?;
        Ok(result)
    })
}

fn core_network(chain: &str) -> &str {
    match chain {
        "main" => "bitcoin",
        "test" | "testnet3" => "testnet",
        other => other,
    }
}

/// Runs one external-signer command; errors are printed as `{"error": ...}` as Core expects.
pub(crate) fn btc_signer(args: BtcSignerArgs) -> anyhow::Result<()> {
    let out = match signer_command(&args) {
        Ok(v) => v,
        Err(e) => json!({ "error": e.to_string() }),
    };
    println!("{out}");
    Ok(())
}

fn signer_command(args: &BtcSignerArgs) -> anyhow::Result<Value> {
    let descriptors = || rpc(args, "btc_getDescriptors", json!({ "key": args.key }));
    let check = |d: &Value| -> anyhow::Result<()> {
        let network = d["network"].as_str().unwrap_or_default();
        anyhow::ensure!(
            network == core_network(&args.chain),
            "keyguard signs for {network}, Core asked for {}",
            args.chain
        );
        if let Some(fp) = &args.fingerprint {
            anyhow::ensure!(
                d["fingerprint"] == fp.as_str(),
                "fingerprint {fp} is not keyguard's"
            );
        }
        Ok(())
    };
    match &args.command {
        SignerCommand::Enumerate => {
            let d = descriptors()?;
            Ok(
                json!([{ "fingerprint": d["fingerprint"], "name": format!("keyguard {}", d["key"].as_str().unwrap_or_default()) }]),
            )
        }
        SignerCommand::Getdescriptors { account } => {
            // The daemon answers for the accounts the key's policy registers and names the
            // registered ones when Core asks for another.
            let d = rpc(
                args,
                "btc_getDescriptors",
                json!({ "key": args.key, "account": account }),
            )?;
            check(&d)?;
            Ok(json!({ "receive": d["receive"], "internal": d["internal"] }))
        }
        SignerCommand::Signtx => {
            let d = descriptors()?;
            check(&d)?;
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            // Core writes the PSBT alone, or as `signtx <psbt>` on older versions.
            let psbt = input.split_whitespace().last().unwrap_or_default();
            let signed = rpc(
                args,
                "btc_signPsbt",
                json!({ "psbt": psbt, "key": args.key }),
            )?;
            Ok(json!({ "psbt": signed["psbt"] }))
        }
        SignerCommand::Displayaddress { desc } => {
            anyhow::bail!("keyguard has no display to show {desc} on; verify the address with `keyguard keys descriptors`")
        }
    }
}
