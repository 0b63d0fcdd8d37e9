//! Admin API client commands: users, approvals, the kill switch and raw calls. Each talks to
//! the daemon's Unix socket as a user with a TOTP code; only the first admin is created
//! locally (bootstrap), because nobody could approve it otherwise.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::access::totp;
use crate::access::totp_vault::TotpVault;
use crate::config::Config;
use crate::store::Store;

/// How to reach the admin API and who is asking.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// Configuration file (to find the admin socket).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Admin socket, instead of reading it from the config.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The admin API over TLS instead of the socket: `https://host:port`.
    #[arg(long, env = "KEYGUARD_ADMIN_URL")]
    admin_url: Option<String>,
    /// CA certificate (PEM) that issued the admin listener's certificate.
    #[arg(long, env = "KEYGUARD_ADMIN_CA")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), when the admin listener requires one.
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long)]
    client_key: Option<PathBuf>,
    /// Your user name.
    #[arg(long, env = "KEYGUARD_USER")]
    user: Option<String>,
    /// Your current TOTP code (prompted for when absent).
    #[arg(long, env = "KEYGUARD_TOTP")]
    totp: Option<String>,
    /// JSON output for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Add a user and show its TOTP enrolment (once). Adding an admin or an approver needs two
    /// admins; the first two admins are created locally (with --config, by whoever can write
    /// the database).
    Add {
        /// The new user's name.
        name: String,
        /// admin, operator, approver or auditor (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Approval group (repeatable), e.g. treasury.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List users with their roles and groups.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a user (an admin: needs a second admin making the same request).
    Remove {
        /// The user to remove.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Pending requests with their decoded intent, oldest first, one page at a time.
    List {
        /// Most requests shown (1-500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this approval id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve a pending request.
    Approve {
        /// Approval id (`apr-...`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reject a pending request (one rejection closes it).
    Reject {
        /// Approval id (`apr-...`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `keyguard admin call METHOD PARAMS`: any admin method, for scripts.
#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// Method, e.g. `keys.status`.
    method: String,
    /// Parameters as a JSON object.
    #[arg(default_value = "{}")]
    params: String,
    #[command(flatten)]
    admin: AdminArgs,
}

impl AdminArgs {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let Some(config) = &self.config else {
            bail!("give --config or --socket");
        };
        Ok(Config::load(config)?.admin_socket())
    }

    fn code(&self) -> anyhow::Result<String> {
        if let Some(code) = &self.totp {
            return Ok(code.clone());
        }
        eprint!("TOTP code: ");
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the TOTP code")?;
        Ok(line.trim().to_owned())
    }

    /// Calls `method` and returns its result, or fails with the API's error message.
    pub(crate) fn call(&self, method: &str, mut params: Value) -> anyhow::Result<Value> {
        let socket = match &self.admin_url {
            Some(_) => None,
            None => Some(self.socket()?),
        };
        let Some(user) = &self.user else {
            bail!("give --user (or KEYGUARD_USER)");
        };
        if let Value::Object(p) = &mut params {
            p.insert("auth".into(), json!({"user": user, "totp": self.code()?}));
        }
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response: Value = match (&self.admin_url, socket) {
            (Some(url), _) => super::admin_tls::call(
                &super::admin_tls::TlsTarget {
                    url,
                    ca_cert: self.ca_cert.as_ref(),
                    client_cert: self.client_cert.as_ref(),
                    client_key: self.client_key.as_ref(),
                },
                &request,
            )?,
            (None, socket) => {
                let socket = socket.context("give --config, --socket or --admin-url")?;
                let mut stream = UnixStream::connect(&socket)
                    .with_context(|| format!("connecting to {}", socket.display()))?;
                stream.write_all(format!("{request}\n").as_bytes())?;
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line)?;
                serde_json::from_str(&line).context("reading the response")?
            }
        };
        if let Some(err) = response.get("error") {
            let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = err.get("message").and_then(Value::as_str).unwrap_or("");
            bail!("{method} refused ({code}): {message}");
        }
        Ok(response.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Prints `result` as JSON or through `human`.
    pub(crate) fn print(&self, result: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{result}");
        } else {
            human(result);
        }
    }
}

fn print_enrolment(result: &Value) {
    if let Some(uri) = result.get("otpauth_uri").and_then(Value::as_str) {
        println!("user {} added", result["name"].as_str().unwrap_or(""));
        println!("TOTP enrolment (shown once, scan or copy it now):");
        println!("{uri}");
        if let Some(qr) = totp::qr_text(uri) {
            println!("{qr}");
        }
    } else {
        print_status(result);
    }
}

fn print_status(result: &Value) {
    match result.get("status").and_then(Value::as_str) {
        Some("pending") => println!(
            "pending: {} (a second admin must make the same request)",
            result["action"].as_str().unwrap_or("")
        ),
        _ => println!("{result}"),
    }
}

/// Creates the first admin directly in the database (no admin exists to approve it).
fn bootstrap(
    admin: &AdminArgs,
    name: &str,
    roles: &[String],
    groups: &[String],
) -> anyhow::Result<bool> {
    let Some(config) = &admin.config else {
        return Ok(false);
    };
    let config = Config::load(config)?;
    let store = Store::open_configured(&config.store, &config.data.database())?;
    let db = store.state_db()?;
    // Two admins must exist before the two-admin rule can work; until then whoever can write
    // the database file (root or the service user) creates them.
    let admins = db.admin_count()?;
    if admins >= 2 || !roles.iter().any(|r| r == "admin") {
        return Ok(false);
    }
    // Sealed like the daemon seals it when the passphrase is at hand; otherwise the daemon
    // seals this row at its next start or the first time the user signs in.
    let vault = match super::keys::passphrase(&config) {
        Ok(p) => TotpVault::open(&db, &p, super::keys::kdf(&config))?,
        Err(_) => TotpVault::without_key(),
    };
    let secret = totp::new_secret()?;
    let uri = totp::enrolment_uri(&secret, name, &config.admin.issuer)?;
    if !vault.add_user(&db, name, roles, groups, &secret)? {
        bail!("user {name:?} exists");
    }
    store.close()?;
    eprintln!("keyguard: fewer than two admins existed; created admin {name} locally");
    let result = json!({"name": name, "otpauth_uri": uri.as_str()});
    admin.print(&result, print_enrolment);
    Ok(true)
}

pub(crate) fn users(command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Add {
            name,
            roles,
            groups,
            admin,
        } => {
            if bootstrap(&admin, &name, &roles, &groups)? {
                return Ok(());
            }
            let r = admin.call(
                "users.add",
                json!({"name": name, "roles": roles, "groups": groups}),
            )?;
            admin.print(&r, print_enrolment);
        }
        UsersCommand::List { admin } => {
            let r = admin.call("users.list", json!({}))?;
            admin.print(&r, |r| {
                for u in r.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} roles={} groups={}",
                        u["name"].as_str().unwrap_or(""),
                        u["roles"],
                        u["groups"]
                    );
                }
            });
        }
        UsersCommand::Remove { name, admin } => {
            let r = admin.call("users.remove", json!({"name": name}))?;
            admin.print(&r, |r| {
                if r["status"] == "pending" {
                    print_status(r);
                } else {
                    println!("user {name} removed");
                }
            });
        }
    }
    Ok(())
}

pub(crate) fn approvals(command: ApprovalsCommand) -> anyhow::Result<()> {
    let (admin, method, params) = match command {
        ApprovalsCommand::List {
            limit,
            after,
            admin,
        } => (
            admin,
            "approvals.list",
            json!({"limit": limit, "after": after}),
        ),
        ApprovalsCommand::Approve { id, admin } => (admin, "approvals.approve", json!({"id": id})),
        ApprovalsCommand::Reject { id, admin } => (admin, "approvals.reject", json!({"id": id})),
    };
    let r = admin.call(method, params)?;
    admin.print(&r, |r| {
        let list = match r {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for a in list {
            let s = &a["summary"];
            println!(
                "{} {} {}/{} key={} chain={} to={} value={} selector={} requester={} expires={}",
                a["id"].as_str().unwrap_or(""),
                a["state"].as_str().unwrap_or(""),
                a["approved"],
                a["required"],
                a["key_id"].as_str().unwrap_or(""),
                a["chain"].as_str().unwrap_or("-"),
                s["to"],
                s["value"],
                s["selector"],
                a["requester"].as_str().unwrap_or(""),
                a["expires_ms"],
            );
        }
    });
    Ok(())
}

/// `keys disable|enable|status` through the admin API.
pub(crate) fn key_switch(
    method: &str,
    key: Option<String>,
    all: bool,
    admin: &AdminArgs,
) -> anyhow::Result<()> {
    let params = match (key, all) {
        (Some(k), false) => json!({"key": k}),
        (None, true) => json!({"all": true}),
        (None, false) if method == "keys.status" => json!({}),
        _ => bail!("give a KEY or --all"),
    };
    let r = admin.call(method, params)?;
    admin.print(&r, |r| {
        if let Some(k) = r.get("disabled").and_then(Value::as_str) {
            println!("disabled: {k} (no new signature will start)");
        } else if let Some(k) = r.get("enabled").and_then(Value::as_str) {
            println!("enabled: {k}");
        } else {
            print_status(r);
        }
    });
    Ok(())
}

pub(crate) fn call(args: CallArgs) -> anyhow::Result<()> {
    let params: Value = serde_json::from_str(&args.params).context("params must be JSON")?;
    let r = args.admin.call(&args.method, params)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
