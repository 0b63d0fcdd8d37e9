//! The admin API: JSON-RPC 2.0, one request per line, on a Unix socket that only the service
//! user can open (mode 0600); optionally also over TLS on TCP ([`tcp`]). Never on a signing
//! listener.
//!
//! Every request carries `params.auth = {user, totp}`. The order is fixed: authenticate the
//! user (TOTP, single use) -> check the role table -> act -> audit. Refusals are audited too,
//! under `client = "user:<name>"` and `method = "admin.<method>"`.

mod chain_state;
mod clients;
pub mod console;
pub mod gate;
mod methods;
pub mod tcp;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::access::clients::ClientBook;
use crate::access::kill::KillSwitch;
use crate::access::roles::{self, Role};
use crate::access::totp;
use crate::access::totp_vault::TotpVault;
use crate::approvals::Approvals;
use crate::config::{parse_duration, AdminConfig};
use crate::store::{AuditEntry, AuditLog, Decision, StateDb, UserRecord};
use gate::{Peer, PeerGate};

/// Longest request line accepted; admin requests are small.
const MAX_LINE: usize = 64 * 1024;

/// JSON-RPC error codes of the admin API.
pub mod codes {
    /// Malformed request or parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Not authenticated (user/TOTP) or the role does not allow the method.
    pub const UNAUTHORIZED: i32 = -32005;
    /// The action was understood but cannot be done (e.g. a vote that is not allowed).
    pub const REFUSED: i32 = -32010;
    /// Storage or internal failure.
    pub const INTERNAL: i32 = -32603;
}

/// A request to the main loop to reload the configuration; answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// Everything the admin API acts on.
pub struct AdminContext {
    pub settings: AdminConfig,
    pub db: StateDb,
    pub audit: AuditLog,
    pub kill: Arc<KillSwitch>,
    pub approvals: Approvals,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Opens the users' sealed TOTP secrets.
    pub vault: Arc<TotpVault>,
    /// Managed clients, swapped after every change so listeners see it at the next request.
    pub clients: Arc<ClientBook>,
    /// Per-peer connection, rate and sign-in limits of the TCP listener.
    pub gate: Arc<PeerGate>,
    /// The web console, when `[admin.console]` enables it (TLS listener only).
    pub console: Option<Arc<console::Console>>,
    /// Running audit counts (`audit.stats`, the console's overview).
    pub audit_counter: Arc<crate::store::AuditCounter>,
    /// The configured keys, for the console's Keys page.
    pub key_list: Arc<Vec<console::KeyRow>>,
    /// The daemon's readiness (key services' health), for the console's overview.
    pub readiness: Option<crate::server::metrics_http::Readiness>,
    next_id: AtomicU64,
}

impl AdminContext {
    /// Builds the context.
    pub fn new(
        settings: AdminConfig,
        db: StateDb,
        audit: AuditLog,
        kill: Arc<KillSwitch>,
        approvals: Approvals,
        reload: mpsc::Sender<ReloadRequest>,
    ) -> Self {
        let gate = Arc::new(PeerGate::new(
            settings.limits.clone(),
            &settings.totp_lockout,
            settings.totp_max_failures,
        ));
        let console =
            settings.console.as_ref().filter(|c| c.enabled).and_then(
                |c| match console::Console::new(c) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        tracing::error!(error = %e, "web console disabled");
                        None
                    }
                },
            );
        AdminContext {
            gate,
            console,
            key_list: Arc::new(Vec::new()),
            readiness: None,
            audit_counter: Arc::new(crate::store::AuditCounter::default()),
            settings,
            db,
            audit,
            kill,
            approvals,
            reload,
            vault: Arc::new(TotpVault::without_key()),
            clients: Arc::new(ClientBook::default()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Seals new users' TOTP secrets with `vault` (without one they are stored raw).
    pub fn with_vault(mut self, vault: Arc<TotpVault>) -> Self {
        self.vault = vault;
        self
    }

    /// Shows `keys` on the console's Keys page.
    pub fn with_key_list(mut self, keys: Vec<console::KeyRow>) -> Self {
        self.key_list = Arc::new(keys);
        self
    }

    /// Shows `readiness` (started, key services reachable) on the console's overview.
    pub fn with_readiness(mut self, readiness: crate::server::metrics_http::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Manages `clients` (the daemon's book, shared with its listeners).
    pub fn with_clients(mut self, clients: Arc<ClientBook>) -> Self {
        self.clients = clients;
        self
    }

    fn lockout_ms(&self) -> i64 {
        parse_duration(&self.settings.totp_lockout).map_or(900_000, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
    }

    fn proposal_ttl_ms(&self) -> i64 {
        parse_duration(&self.settings.proposal_ttl).map_or(3_600_000, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
    }
}

/// An admin API failure: a JSON-RPC error, and the audit rule it is recorded under.
#[derive(Debug)]
pub(crate) struct AdminError {
    code: i32,
    rule: &'static str,
    message: String,
}

impl AdminError {
    pub(crate) fn new(code: i32, rule: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            code,
            rule,
            message: message.into(),
        }
    }

    /// The rule this failure is audited and answered under.
    pub(crate) fn rule(&self) -> &'static str {
        self.rule
    }

    /// The message shown to the caller.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, "admin.invalid", message)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(codes::INTERNAL, "admin.internal", e.to_string())
    }
}

/// What a method did: its result, and how it is audited.
pub(crate) struct Done {
    result: Value,
    decision: Decision,
    key: Option<String>,
}

/// Binds the socket (replacing a stale one), restricts it to the owner, and serves.
pub async fn start(path: &Path, ctx: Arc<AdminContext>) -> std::io::Result<PathBuf> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, ctx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(path.to_path_buf())
}

async fn serve_connection(stream: UnixStream, ctx: Arc<AdminContext>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = if line.len() > MAX_LINE {
            error_response(Value::Null, codes::INVALID_PARAMS, "request line too long")
        } else {
            handle_line(&ctx, &line, Peer::Local).await
        };
        let mut out = response.to_string().into_bytes();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || line.len() > MAX_LINE {
            return;
        }
    }
}

fn error_response(id: Value, code: i32, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

async fn handle_line(ctx: &AdminContext, line: &[u8], peer: Peer) -> Value {
    if let Err(refusal) = ctx.gate.admit(peer) {
        return peer_refused(ctx, peer, refusal).await;
    }
    let request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error_response(Value::Null, codes::INVALID_PARAMS, &e.to_string()),
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return error_response(id, codes::INVALID_PARAMS, "missing method");
    };
    let params = request.get("params").cloned().unwrap_or(json!({}));
    match handle(ctx, method, params, peer).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        // The rule goes back too, as on the signing listeners, so a refused caller (or its
        // script) can tell a role refusal from a bad code without parsing the message.
        Err(e) => {
            let mut response = error_response(id, e.code, &e.message);
            response["error"]["data"] = json!({ "rule": e.rule });
            response
        }
    }
}

/// A request refused for its peer (rate or failed sign-ins) before it was parsed; audited
/// under the peer's refusal budget.
async fn peer_refused(ctx: &AdminContext, peer: Peer, refusal: gate::PeerRefusal) -> Value {
    let n = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let message = match refusal {
        gate::PeerRefusal::Rate => "too many requests from this address; slow down",
        gate::PeerRefusal::Throttled => {
            "too many failed sign-ins from this address; try again later"
        }
    };
    let entry = AuditEntry {
        request_id: format!("admin-{:x}-{n}", crate::store::now_ms()),
        client: peer.source(),
        key_id: None,
        chain: None,
        method: "admin.request".into(),
        summary: Value::Null,
        decision: Decision::Refused,
        rule: Some(refusal.rule().into()),
        reason: Some(message.into()),
        tx_hash: None,
    };
    if let Err(e) = ctx.audit.append_from(&peer.source(), entry).await {
        tracing::error!(error = %e, "audit of a peer refusal failed");
    }
    let mut response = error_response(Value::Null, codes::UNAUTHORIZED, message);
    response["error"]["data"] = json!({ "rule": refusal.rule() });
    response
}

/// Authenticates, authorizes, runs and audits one admin request.
async fn handle(
    ctx: &AdminContext,
    method: &str,
    mut params: Value,
    peer: Peer,
) -> Result<Value, AdminError> {
    let auth = params
        .as_object_mut()
        .and_then(|p| p.remove("auth"))
        .unwrap_or(Value::Null);
    let user_name = auth
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let code = auth.get("totp").and_then(Value::as_str).unwrap_or("");
    handle_as(ctx, method, params, peer, &user_name, Proof::Totp(code)).await
}

/// How a caller proves who it is for one request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Proof<'a> {
    /// A fresh TOTP code: every admin API request, and every state-changing console action.
    Totp(&'a str),
    /// A signed-in web console session (passkey): only the [`READ_ONLY`] methods, so a stolen
    /// session cookie alone can look but never act.
    Session,
}

/// Methods that change nothing; the only ones a console session may call without a fresh code.
pub(crate) const READ_ONLY: &[&str] = &[
    "users.list",
    "clients.list",
    "keys.status",
    "approvals.list",
    "audit.query",
    "audit.verify",
    "audit.stats",
    "bitcoin.transactions",
];

/// The one path of every admin request, from the socket, the TLS API or the web console:
/// authenticate (`proof`) -> check the role table -> act -> audit.
pub(crate) async fn handle_as(
    ctx: &AdminContext,
    method: &str,
    params: Value,
    peer: Peer,
    user_name: &str,
    proof: Proof<'_>,
) -> Result<Value, AdminError> {
    let user_name = user_name.to_owned();
    let known = roles::PERMISSIONS.iter().any(|(m, _)| *m == method);
    let outcome = if !known {
        Err(AdminError::new(
            codes::METHOD_NOT_FOUND,
            "admin.unknown_method",
            format!("unknown method {method:?}"),
        ))
    } else {
        let who = match proof {
            Proof::Totp(code) => authenticate(ctx, &user_name, code, peer).await,
            Proof::Session if !READ_ONLY.contains(&method) => Err(AdminError::new(
                codes::UNAUTHORIZED,
                "admin.console_fresh_totp",
                format!("{method} changes state: it needs a fresh TOTP code"),
            )),
            Proof::Session => match ctx.db.user(&user_name) {
                Ok(Some(user)) => Ok(user),
                Ok(None) => Err(AdminError::new(
                    codes::UNAUTHORIZED,
                    "admin.auth",
                    "unknown user",
                )),
                Err(e) => Err(AdminError::internal(e)),
            },
        };
        match who {
            Err(e) => Err(e),
            Ok(user) => {
                let user_roles: Vec<Role> =
                    user.roles.iter().filter_map(|r| Role::parse(r)).collect();
                if roles::allowed(&user_roles, method) {
                    methods::run(ctx, &user, method, &params).await
                } else {
                    Err(AdminError::new(
                        codes::UNAUTHORIZED,
                        "admin.role",
                        format!("roles {:?} may not call {method}", user.roles),
                    ))
                }
            }
        }
    };
    record(ctx, peer, &user_name, method, params, &outcome).await?;
    tracing::info!(user = %user_name, method, ok = outcome.is_ok(), "admin request");
    outcome.map(|d| d.result).map_err(AdminError::on_the_wire)
}

/// Audits one admin action (`admin.<method>`, client `user:<name>`) and its outcome; the one
/// audit path of the socket, the TLS API and the console. Fails if the row cannot be written.
pub(crate) async fn record(
    ctx: &AdminContext,
    peer: Peer,
    user_name: &str,
    method: &str,
    params: Value,
    outcome: &Result<Done, AdminError>,
) -> Result<(), AdminError> {
    let n = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let mut entry = AuditEntry {
        request_id: format!("admin-{:x}-{n}", crate::store::now_ms()),
        client: format!("user:{user_name}"),
        key_id: None,
        chain: None,
        method: format!("admin.{method}"),
        summary: params,
        decision: Decision::Refused,
        rule: None,
        reason: None,
        tx_hash: None,
    };
    match outcome {
        Ok(done) => {
            entry.decision = done.decision;
            entry.key_id = done.key.clone();
            if done.decision == Decision::Held {
                entry.rule = Some("admin.two_admins".into());
            }
        }
        Err(e) => {
            entry.rule = Some(e.rule.into());
            entry.reason = Some(e.message.clone());
            entry.decision = if e.code == codes::INTERNAL {
                Decision::Failed
            } else {
                Decision::Refused
            };
        }
    }
    // Refusals are metered per peer: the user name in `auth` is the caller's choice.
    if let Err(e) = ctx.audit.append_from(&peer.source(), entry).await {
        tracing::error!(error = %e, "audit of an admin action failed");
        return Err(AdminError::internal(format!("audit log unavailable: {e}")));
    }
    Ok(())
}

/// The answer to every failed sign-in, whatever the reason (unknown user, wrong code, locked):
/// the same code, message and rule, so the answer does not tell which names exist or are
/// locked. The audit row keeps the real rule.
const AUTH_FAILED: &str = "authentication failed: unknown user, invalid TOTP code, or locked";

impl AdminError {
    fn on_the_wire(self) -> Self {
        if self.rule == "admin.auth" || self.rule == "admin.totp_lockout" {
            return AdminError::new(codes::UNAUTHORIZED, "admin.auth", AUTH_FAILED);
        }
        self
    }
}

/// The user named in `auth`, if the TOTP code is right (and, by default, not used before).
///
/// Brute force of a 6-digit code must not be possible at network speed, and a stream of wrong
/// codes must not let an anonymous peer lock a named user out. So, in order:
/// - a TCP peer with too many failed sign-ins is refused before any user is looked at
///   (`admin.peer_throttle`, in [`gate`]);
/// - `totp_max_failures` consecutive failures lock the user for `totp_lockout`
///   (`admin.totp_lockout`): for a TCP peer the lock is keyed on (peer, user), so it binds the
///   peer that failed; on the local socket it is the durable per-user lock (only the service
///   user can open the socket), which survives a restart. Once a lock has expired the next
///   failure locks again at once; only a correct code resets the count.
///
/// Unknown users count as failures too, and every failure answers the same (see
/// [`AUTH_FAILED`]).
async fn authenticate(
    ctx: &AdminContext,
    name: &str,
    code: &str,
    peer: Peer,
) -> Result<UserRecord, AdminError> {
    let refused = |why: &str| AdminError::new(codes::UNAUTHORIZED, "admin.auth", why.to_owned());
    let max = ctx.settings.totp_max_failures;
    let locked = |name: &str| {
        AdminError::new(
            codes::UNAUTHORIZED,
            "admin.totp_lockout",
            format!(
                "user {name} is locked after {max} consecutive failed sign-ins \
                 (admin.totp_lockout)"
            ),
        )
    };
    if ctx.gate.locked(peer, name) {
        // Still a failed sign-in for the peer's count: a flood at one locked name keeps its
        // peer throttled, and keeps the lock on that peer.
        ctx.gate.failed(peer, name);
        return Err(locked(name));
    }
    let Some(user) = ctx.db.user(name).map_err(AdminError::internal)? else {
        ctx.gate.failed(peer, name);
        return Err(refused("unknown user"));
    };
    let now_ms = crate::store::now_ms();
    if peer == Peer::Local && user.locked_until_ms > now_ms {
        return Err(locked(name));
    }
    let secret = ctx
        .vault
        .secret(&ctx.db, &user)
        .map_err(AdminError::internal)?;
    let now = u64::try_from(now_ms / 1000).unwrap_or(0);
    let step = match totp::verify(&secret, code, now, u64::from(ctx.settings.totp_skew)) {
        Ok(step) => step,
        Err(_) => {
            let now_locked = if peer == Peer::Local {
                ctx.db
                    .record_totp_failure(&user.name, max, ctx.lockout_ms(), now_ms)
                    .map_err(AdminError::internal)?
                    .is_some()
            } else {
                ctx.gate.failed(peer, &user.name)
            };
            return Err(if now_locked {
                locked(name)
            } else {
                refused("invalid TOTP code")
            });
        }
    };
    drop(secret);
    if ctx.settings.totp_single_use
        && !ctx
            .db
            .consume_totp_step(&user.name, step)
            .map_err(AdminError::internal)?
    {
        // Only someone holding a valid code sees this, so it reveals nothing to a guesser.
        return Err(AdminError::new(
            codes::UNAUTHORIZED,
            "admin.totp_reused",
            "TOTP code already used; wait for the next one",
        ));
    }
    ctx.gate.succeeded(peer, &user.name);
    if peer == Peer::Local {
        ctx.db
            .reset_totp_failures(&user.name)
            .map_err(AdminError::internal)?;
    }
    Ok(user)
}
