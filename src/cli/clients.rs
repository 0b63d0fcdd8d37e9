//! `keyguard clients ...`: applications' bearer tokens and scopes through the admin API, and
//! `clients token` for config-file clients.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::admin::AdminArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum ClientsCommand {
    /// Make a new random bearer token and print it with the hash to put in the config.
    Token,
    /// Add a client; needs a second admin making the same request, who is shown its bearer
    /// token (once).
    Add {
        /// Client name (used in logs and the audit log).
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clients managed here and those from the config file (read-only).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change a client's scope; what is not given stays. Widening it (more keys, chains or
    /// methods, a higher rate limit) is held until a second admin runs the same command.
    Update {
        /// Client name.
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Allow every chain.
        #[arg(long, conflicts_with = "chains")]
        any_chain: bool,
        /// Allow every signing method.
        #[arg(long, conflicts_with = "methods")]
        any_method: bool,
        /// Remove the client's own rate limit (global limits still apply).
        #[arg(long, conflicts_with = "rate")]
        no_rate_limit: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace a client's token (the old one stops working once a second admin makes the same
    /// request); the new one is printed once, to that second admin.
    Rotate {
        /// Client name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a client (its token stops working at once).
    Remove {
        /// Client name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// A client's scope on the command line.
#[derive(Debug, Args)]
pub(crate) struct ScopeArgs {
    /// Key it may use (repeatable; `*` for all).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Chain it may sign for (repeatable: `eip155:1`, `bitcoin:regtest`, `eip155:*`); none: any.
    #[arg(long = "chain")]
    chains: Vec<String>,
    /// Signing method it may call (repeatable: `eth_signTransaction` ...); none: any.
    #[arg(long = "method")]
    methods: Vec<String>,
    /// Its own rate limit, `PER_SECOND/BURST` (e.g. `5/10`).
    #[arg(long)]
    rate: Option<String>,
    /// Response shape override: raw or geth.
    #[arg(long)]
    response: Option<String>,
}

fn parse_rate(s: &str) -> anyhow::Result<Value> {
    let (rate, burst) = s
        .split_once('/')
        .context("--rate: expected PER_SECOND/BURST, e.g. 5/10")?;
    let per_second: f64 = rate.trim().parse().context("--rate: PER_SECOND")?;
    let burst: u32 = burst.trim().parse().context("--rate: BURST")?;
    Ok(json!({"per_second": per_second, "burst": burst}))
}

impl ScopeArgs {
    /// The given parts as API parameters.
    fn params(&self, name: &str) -> anyhow::Result<Map<String, Value>> {
        let mut p = Map::new();
        p.insert("name".into(), json!(name));
        for (key, list) in [
            ("keys", &self.keys),
            ("chains", &self.chains),
            ("methods", &self.methods),
        ] {
            if !list.is_empty() {
                p.insert(key.into(), json!(list));
            }
        }
        if let Some(rate) = &self.rate {
            p.insert("rate_limit".into(), parse_rate(rate)?);
        }
        if let Some(r) = &self.response {
            p.insert("response".into(), json!(r));
        }
        Ok(p)
    }
}

fn print_token(verb: &str, r: &Value) {
    if r["status"] == "pending" {
        println!(
            "pending: {} (a second admin must make the same request; the token is shown to them)",
            r["action"].as_str().unwrap_or("")
        );
        return;
    }
    println!("client {} {verb}", r["name"].as_str().unwrap_or(""));
    println!(
        "token (shown once, store it now): {}",
        r["token"].as_str().unwrap_or("")
    );
    println!("token_sha256: {}", r["token_sha256"].as_str().unwrap_or(""));
}

fn list_text(list: &[Value]) -> String {
    if list.is_empty() {
        "any".into()
    } else {
        list.iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn print_list(r: &Value) {
    for c in r.as_array().into_iter().flatten() {
        let source = c["source"].as_str().unwrap_or("");
        let (keys, chains, methods, rate) = if source == "config" {
            let keys = c["keys"].as_array().cloned().unwrap_or_default();
            (
                list_text(&keys),
                "any".into(),
                "any".into(),
                "-".to_string(),
            )
        } else {
            let s = &c["scope"];
            let rate = match &s["rate_limit"] {
                Value::Null => "-".to_string(),
                l => format!("{}/s burst {}", l["per_second"], l["burst"]),
            };
            let list = |k: &str| list_text(s[k].as_array().map_or(&[][..], Vec::as_slice));
            (list("keys"), list("chains"), list("methods"), rate)
        };
        println!(
            "{:<20} {:<6} keys={keys} chains={chains} methods={methods} rate={rate}{}",
            c["name"].as_str().unwrap_or(""),
            source,
            if source == "config" {
                " (read-only)"
            } else {
                ""
            },
        );
    }
}

pub(crate) fn run(command: ClientsCommand) -> anyhow::Result<()> {
    match command {
        ClientsCommand::Token => {
            use rand::RngCore;
            let mut raw = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let token = hex::encode(raw);
            println!("token: {token}");
            println!(
                "token_sha256: {}",
                hex::encode(crate::access::token_hash(&token))
            );
        }
        ClientsCommand::Add { name, scope, admin } => {
            if scope.keys.is_empty() {
                bail!("give at least one --key (or --key '*')");
            }
            let r = admin.call("clients.add", Value::Object(scope.params(&name)?))?;
            admin.print(&r, |r| print_token("added", r));
        }
        ClientsCommand::List { admin } => {
            let r = admin.call("clients.list", json!({}))?;
            admin.print(&r, print_list);
        }
        ClientsCommand::Update {
            name,
            scope,
            any_chain,
            any_method,
            no_rate_limit,
            admin,
        } => {
            let mut p = scope.params(&name)?;
            if any_chain {
                p.insert("chains".into(), json!([]));
            }
            if any_method {
                p.insert("methods".into(), json!([]));
            }
            if no_rate_limit {
                p.insert("rate_limit".into(), Value::Null);
            }
            let r = admin.call("clients.update", Value::Object(p))?;
            admin.print(&r, |r| {
                if r["status"] == "pending" {
                    println!(
                        "pending: widens {} (a second admin must make the same request)",
                        list_text(r["widens"].as_array().map_or(&[][..], Vec::as_slice))
                    );
                } else {
                    println!("client {name} updated");
                }
            });
        }
        ClientsCommand::Rotate { name, admin } => {
            let r = admin.call("clients.rotate", json!({"name": name}))?;
            admin.print(&r, |r| print_token("token rotated", r));
        }
        ClientsCommand::Remove { name, admin } => {
            let r = admin.call("clients.remove", json!({"name": name}))?;
            admin.print(&r, |_| println!("client {name} removed"));
        }
    }
    Ok(())
}
