//! The `keyguard` command: the daemon, key management, audit, tokens and the load generator.

mod admin;
mod admin_tls;
mod anchor;
mod audit;
mod bench;
mod bitcoin;
mod clients;
mod cloud;
mod config_check;
mod eth2;
mod keys;
mod people;
mod policy_check;
mod reload;
mod soak;
mod start;
mod state;
mod store_cmd;

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
        command: audit::AuditCommand,
    },
    /// Employees: users with roles and TOTP (through the admin API).
    Users {
        #[command(subcommand)]
        command: admin::UsersCommand,
    },
    /// Signing requests held for M-of-N approval.
    Approvals {
        #[command(subcommand)]
        command: admin::ApprovalsCommand,
    },
    /// Raw admin API access for scripts.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Applications: bearer tokens and their scopes (through the admin API).
    Clients {
        #[command(subcommand)]
        command: clients::ClientsCommand,
    },
    /// Ethereum staking: BLS keys and the slashing-protection database.
    Eth2 {
        #[command(subcommand)]
        command: eth2::Eth2Command,
    },
    /// CometBFT double-sign state: import from a file signer, show, export.
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
    /// The shared PostgreSQL store: copy a SQLite instance into it, trust it after a failover.
    Store {
        #[command(subcommand)]
        command: store_cmd::StoreCommand,
    },
    /// Load generator: eth_signTransaction throughput and latency, and the raw crypto ceiling.
    Bench(bench::BenchArgs),
    /// Bitcoin Core external signer (`bitcoind -signer="keyguard btc-signer"`): enumerate,
    /// getdescriptors, signtx (PSBT on stdin), forwarded to the running daemon.
    BtcSigner(bitcoin::BtcSignerArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Check a configuration without starting.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Dry run: decode a request and print every rule's decision, without signing.
    Check(policy_check::CheckArgs),
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
enum AdminCommand {
    /// Call one admin method with JSON params, print the JSON result.
    Call(admin::CallArgs),
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
            Command::Audit { command } => audit::run(command),
            Command::Users { command } => admin::users(command),
            Command::Approvals { command } => admin::approvals(command),
            Command::Admin {
                command: AdminCommand::Call(args),
            } => admin::call(args),
            Command::Clients { command } => clients::run(command),
            Command::State { command } => state::run(command),
            Command::Eth2 { command } => eth2::run(command),
            Command::Store { command } => store_cmd::run(command),
            Command::Bench(args) => bench::run(args),
            Command::BtcSigner(args) => bitcoin::btc_signer(args),
            Command::Policy {
                command: PolicyCommand::Check(args),
            } => policy_check::run(args),
            Command::Config {
                command: ConfigCommand::Check { config },
            } => config_check::run(&config),
        }
    }
}
