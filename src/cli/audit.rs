//! `keyguard audit ...`: read, filter, export and verify the hash-chained audit log. These read
//! the database file directly (read-only): whoever can read the file can read the log, and it
//! works with the daemon stopped. The admin API's `audit.query` serves auditors remotely.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::{parse_duration, Config};
use crate::store::{AuditFilter, AuditReader, AuditRow, Store};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Recompute the hash chain of the whole audit log; fails at the first bad row. With
    /// `--checkpoints`, also check it against signed anchors of its head (truncation, rollback
    /// to an older copy, a forked chain).
    Verify {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Anchor file (JSON Lines written by the daemon, `[audit.anchors].anchor_file`).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The audit key's public key (hex); default: derived from `[audit.anchors].anchor_key`.
        #[arg(long)]
        anchor_public_key: Option<String>,
    },
    /// Create a new audit key for `[audit.anchors].anchor_key` (ed25519, mode 0600).
    AnchorKey {
        /// Where to write it (must not exist; keep it outside the data directory).
        #[arg(long)]
        out: PathBuf,
    },
    /// The most recent rows (oldest first); `--follow` keeps printing new ones.
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        /// Keep watching for new rows.
        #[arg(long)]
        follow: bool,
    },
    /// Rows matching the filters, in chain order.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// JSON Lines with every column, including the chain hashes, for external anchoring.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Same as `tail` (kept for scripts written before `tail`).
    List {
        #[command(flatten)]
        filter: FilterArgs,
    },
}

/// Filters shared by the reading commands.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Rows newer than this: a duration ago (`1h`, `30m`) or unix milliseconds.
    #[arg(long)]
    since: Option<String>,
    /// Rows older than this: a duration ago or unix milliseconds.
    #[arg(long)]
    until: Option<String>,
    /// Chain, e.g. `eip155:1`.
    #[arg(long)]
    chain: Option<String>,
    /// Key id.
    #[arg(long)]
    key: Option<String>,
    /// Client (or `user:<name>` for admin actions).
    #[arg(long)]
    client: Option<String>,
    /// signed, refused, failed, withheld, held or accepted.
    #[arg(long)]
    decision: Option<String>,
    /// Rule name, e.g. `evm.max_value`.
    #[arg(long)]
    rule: Option<String>,
    /// Method, e.g. `eth_signTransaction` or `admin.keys.disable`.
    #[arg(long)]
    method: Option<String>,
    /// At most this many rows (tail: default 20).
    #[arg(long)]
    limit: Option<usize>,
    /// JSON output (one object per line).
    #[arg(long)]
    json: bool,
}

fn time_arg(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let ago = parse_duration(s).map_err(anyhow::Error::msg)?;
    Ok(crate::store::now_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<AuditFilter> {
        Ok(AuditFilter {
            since_ms: self.since.as_deref().map(time_arg).transpose()?,
            until_ms: self.until.as_deref().map(time_arg).transpose()?,
            chain: self.chain.clone(),
            key: self.key.clone(),
            client: self.client.clone(),
            decision: self.decision.clone(),
            rule: self.rule.clone(),
            method: self.method.clone(),
            after_seq: None,
            before_seq: None,
            limit: self.limit,
            newest_first: false,
        })
    }

    fn database(&self) -> anyhow::Result<Source> {
        Ok(Source::of(&Config::load(&self.config)?))
    }
}

/// Where the audit log is read from: the SQLite file (opened read-only, no writer) or the
/// shared PostgreSQL store.
enum Source {
    Sqlite(PathBuf),
    Postgres(crate::config::PgSettings),
}

impl Source {
    fn of(config: &Config) -> Source {
        match (&config.store.backend, &config.store.postgres) {
            (crate::config::StoreBackend::Postgres, Some(pg)) => Source::Postgres(pg.clone()),
            _ => Source::Sqlite(config.data.database()),
        }
    }

    /// Read-only: no migration, no writer (a role with `SELECT` is enough).
    fn open(pg: &crate::config::PgSettings) -> anyhow::Result<AuditReader> {
        AuditReader::open_postgres(pg).context("connecting to the PostgreSQL store")
    }
}

fn print_row(r: &AuditRow, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "{:>6} {} {:<8} {:<14} {:<22} {:<16} {}",
            r.seq,
            r.ts_ms,
            r.decision,
            r.client,
            r.method,
            r.key_id.as_deref().unwrap_or("-"),
            r.rule.as_deref().or(r.tx_hash.as_deref()).unwrap_or("")
        );
    }
    Ok(())
}

fn query(db: &Source, filter: &AuditFilter) -> anyhow::Result<Vec<AuditRow>> {
    match db {
        Source::Sqlite(path) => {
            Store::query_path(path, filter).with_context(|| format!("reading {}", path.display()))
        }
        Source::Postgres(pg) => Ok(Source::open(pg)?.query(filter)?),
    }
}

pub(crate) fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify {
            config,
            checkpoints,
            anchor_public_key,
        } => {
            let config = Config::load(&config)?;
            let report = match Source::of(&config) {
                Source::Sqlite(path) => Store::verify_path(&path)?,
                Source::Postgres(pg) => Source::open(&pg)?.verify()?,
            };
            println!(
                "audit log verified: {} rows, head {}",
                report.rows,
                hex::encode(report.head)
            );
            match checkpoints {
                Some(file) => verify_anchors(&config, &file, anchor_public_key.as_deref()),
                None => Ok(()),
            }
        }
        AuditCommand::AnchorKey { out } => super::anchor::create_key(&out),
        AuditCommand::Tail { filter, follow } => tail(&filter, follow),
        AuditCommand::List { filter } => tail(&filter, false),
        AuditCommand::Query { filter: args } => {
            for r in query(&args.database()?, &args.filter()?)? {
                print_row(&r, args.json)?;
            }
            Ok(())
        }
        AuditCommand::Export { filter: args, out } => {
            let rows = query(&args.database()?, &args.filter()?)?;
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            for r in &rows {
                serde_json::to_writer(&mut sink, r)?;
                sink.write_all(b"\n")?;
            }
            sink.flush()?;
            if out.is_some() {
                eprintln!("exported {} rows", rows.len());
            }
            Ok(())
        }
    }
}

fn verify_anchors(config: &Config, file: &Path, public: Option<&str>) -> anyhow::Result<()> {
    let key = match (public, &config.audit.anchors) {
        (Some(hex_key), _) => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hex_key.trim(), &mut bytes)
                .context("--anchor-public-key: 64 hex characters")?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .context("--anchor-public-key: not an ed25519 public key")?
        }
        (None, Some(audit)) => super::anchor::load_key(&audit.anchor_key)?.verifying_key(),
        (None, None) => anyhow::bail!("no [audit.anchors] section and no --anchor-public-key"),
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let report = match Source::of(config) {
        Source::Sqlite(path) => Store::check_anchors_path(&path, &text, &key)?,
        Source::Postgres(pg) => Source::open(&pg)?.check_anchors(&text, &key)?,
    };
    println!(
        "anchors verified: {} anchors, newest anchored row {}",
        report.anchors, report.newest_seq
    );
    Ok(())
}

fn tail(args: &FilterArgs, follow: bool) -> anyhow::Result<()> {
    let db = args.database()?;
    let mut filter = args.filter()?;
    filter.newest_first = true;
    filter.limit = Some(args.limit.unwrap_or(20));
    let mut rows = query(&db, &filter)?;
    rows.reverse();
    let mut last = 0;
    for r in &rows {
        print_row(r, args.json)?;
        last = r.seq;
    }
    if !follow {
        return Ok(());
    }
    filter.newest_first = false;
    filter.limit = None;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        filter.after_seq = Some(last);
        for r in query(&db, &filter)? {
            print_row(&r, args.json)?;
            last = r.seq;
        }
        std::io::stdout().flush()?;
    }
}
