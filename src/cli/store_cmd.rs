//! `keyguard store`: the shared PostgreSQL store's operator commands.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::config::{Config, StoreBackend};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy an existing SQLite instance's state (watermarks, nonces, windows, approvals,
    /// clients, users, controls, audit) into the PostgreSQL store the config names; refuses to
    /// overwrite newer state. Stop the instance first.
    Copy {
        /// Configuration with `[store] backend = "postgres"`.
        #[arg(long)]
        config: PathBuf,
        /// The SQLite database (default: `keyguard.db` in the config's data directory).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// After a failover tripped the replication tripwire and the database was repaired:
    /// accept the database as it is now. Keys still behind what this instance released are
    /// listed and nothing changes, unless `--forget-released`.
    Trust {
        /// Configuration with `[store] backend = "postgres"`.
        #[arg(long)]
        config: PathBuf,
        /// Forget released heights and nonces the database is behind (a double sign becomes
        /// possible for them: only after checking no other signature was released there).
        #[arg(long)]
        forget_released: bool,
    },
}

fn postgres(config: &Config) -> anyhow::Result<&crate::config::PgSettings> {
    match (&config.store.backend, &config.store.postgres) {
        (StoreBackend::Postgres, Some(pg)) => Ok(pg),
        _ => bail!(
            "{}: [store] backend is not \"postgres\"",
            config.path.display()
        ),
    }
}

pub(crate) fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Copy { config, from } => {
            let config = Config::load(&config)?;
            let pg = postgres(&config)?;
            let from = from.unwrap_or_else(|| config.data.database());
            if !from.exists() {
                bail!("{} does not exist", from.display());
            }
            let report = crate::store::copy::copy(&from, pg)
                .with_context(|| format!("copying {} into PostgreSQL", from.display()))?;
            for (table, n) in &report.tables {
                println!("{table}: {n} rows");
            }
            println!("audit_log: {} rows, chain verified", report.audit_rows);
            Ok(())
        }
        StoreCommand::Trust {
            config,
            forget_released,
        } => {
            let config = Config::load(&config)?;
            let pg = postgres(&config)?;
            let (id, behind) = Store::trust_database(pg, &config.data.dir, forget_released)?;
            if !behind.is_empty() {
                for b in &behind {
                    eprintln!("behind: {b}");
                }
                bail!(
                    "the database is behind what this instance released for {} key(s); raise it \
                     (e.g. `keyguard state import`) or pass --forget-released",
                    behind.len()
                );
            }
            println!(
                "trusted database {} timeline {}; restart keyguard",
                id.system_identifier, id.timeline
            );
            Ok(())
        }
    }
}
