//! The `keyguard` command: the daemon, key management, audit, tokens and the load generator.

mod bench;
mod config_check;
mod keys;
mod reload;
mod start;
mod state;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// keyguard: a signing firewall between applications and their keys.
#[derive(Debug, Parser)]
#[command(name = "keyguard", version, about)]
pub struct Cli {
    /// Log format on stderr: human-readable text or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "KEYGUARD_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON Lines, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Start {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage keys (public information only; no command exports a private key).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Read and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Client credentials.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// CometBFT double-sign state: import from a file signer, show, export.
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
    /// Load generator: eth_signTransaction throughput and latency, and the raw crypto ceiling.
    Bench(bench::BenchArgs),
    /// Check a configuration without starting.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate everything `start` would refuse (syntax, rules, paths, permissions, key
    /// references) and print every problem with its location.
    Check {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain of the whole audit log.
    Verify {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the most recent audit rows.
    List {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// How many rows.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// JSON output for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Make a new random bearer token and print it with the hash to put in the config.
    Token,
}

impl Cli {
    /// The requested log format.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// Runs the chosen command.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Start { config } => start::run(&config),
            Command::Keys { command } => keys::run(command),
            Command::Audit { command } => audit(command),
            Command::Clients {
                command: ClientsCommand::Token,
            } => {
                use rand::RngCore;
                let mut raw = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut raw);
                let token = hex::encode(raw);
                println!("token: {token}");
                println!(
                    "token_sha256: {}",
                    hex::encode(crate::access::token_hash(&token))
                );
                Ok(())
            }
            Command::State { command } => state::run(command),
            Command::Bench(args) => bench::run(args),
            Command::Config {
                command: ConfigCommand::Check { config },
            } => config_check::run(&config),
        }
    }
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use crate::config::Config;
    use crate::store::Store;
    match command {
        AuditCommand::Verify { config } => {
            let config = Config::load(&config)?;
            let store = Store::open(&config.data.database())?;
            let report = store.verify_audit()?;
            println!(
                "audit log verified: {} rows, head {}",
                report.rows,
                hex::encode(report.head)
            );
            Ok(())
        }
        AuditCommand::List {
            config,
            limit,
            json,
        } => {
            let config = Config::load(&config)?;
            let store = Store::open(&config.data.database())?;
            let rows = store.recent_audit(limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in rows {
                    println!(
                        "{:>6} {} {:<8} {:<10} {:<20} {} {}",
                        r.seq,
                        r.ts_ms,
                        r.decision,
                        r.client,
                        r.method,
                        r.key_id.as_deref().unwrap_or("-"),
                        r.rule.as_deref().or(r.tx_hash.as_deref()).unwrap_or("")
                    );
                }
            }
            Ok(())
        }
    }
}
