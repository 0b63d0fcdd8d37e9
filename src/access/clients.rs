//! Clients (applications) managed through the admin API, next to those in the config file.
//!
//! A managed client is a bearer token (only its SHA-256 is stored) with a scope: the keys,
//! chains and signing methods it may use and its own rate limit. The [`ClientBook`] holds the
//! current set in memory; every listener's authenticator consults it per request, and the
//! admin API swaps it after each change, so a new, narrowed or removed client is in force for
//! the very next request. Clients from the config file are read-only here (they change with
//! the file and a reload).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::limits::ClientLimiter;
use crate::config::{ClientConfig, LimitConfig, ResponseShape};
use crate::store::{ClientRow, StateDb, StoreError};

/// What a managed client may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientScope {
    /// Key ids it may use (`"*"` for all).
    pub keys: Vec<String>,
    /// Chains (`eip155:1`, `bitcoin:regtest`, `eip155:*`); empty means any chain.
    #[serde(default)]
    pub chains: Vec<String>,
    /// Signing methods (`eth_signTransaction`, `personal_sign`, `btc_signPsbt` ...); empty
    /// means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Its own rate limit, on top of `[rate_limits]`; absent means only those apply.
    #[serde(default)]
    pub rate_limit: Option<LimitConfig>,
    /// Overrides the listener's response shape.
    #[serde(default)]
    pub response: Option<ResponseShape>,
}

/// `exact`, `*`, or `prefix*`.
fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// Whether every value `new` matches is matched by `old` (conservatively: a pattern is covered
/// only by itself or by a wildcard whose prefix it starts with). Empty lists mean "any".
fn covered(old: &[String], new: &[String]) -> bool {
    if old.is_empty() {
        return true;
    }
    !new.is_empty()
        && new.iter().all(|n| {
            old.iter().any(|o| {
                o == n
                    || o.strip_suffix('*')
                        .is_some_and(|prefix| n.starts_with(prefix))
            })
        })
}

impl ClientScope {
    /// Checks names and limits; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.keys.is_empty() {
            return Err("keys: at least one key (or \"*\")".into());
        }
        for k in &self.keys {
            if k != "*" {
                keyguard_chain::KeyId::new(k.as_str()).map_err(|e| format!("keys: {e}"))?;
            }
        }
        let name_ok = |s: &String| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_:-.*".contains(c))
        };
        if let Some(bad) = self.chains.iter().find(|c| !name_ok(c)) {
            return Err(format!("chains: {bad:?} is not a chain name"));
        }
        if let Some(bad) = self.methods.iter().find(|m| !name_ok(m)) {
            return Err(format!("methods: {bad:?} is not a method name"));
        }
        if let Some(l) = &self.rate_limit {
            if super::limits::quota(l).is_none() {
                return Err(
                    "rate_limit: per_second must be a positive number and burst at least 1".into(),
                );
            }
        }
        Ok(())
    }

    /// What `new` grants beyond this scope: the parts that need a second admin. Narrowing
    /// (fewer keys, chains or methods, a lower limit) needs only one.
    pub fn widened_by(&self, new: &ClientScope) -> Vec<&'static str> {
        let mut wider = Vec::new();
        let keys_covered =
            self.keys.iter().any(|k| k == "*") || new.keys.iter().all(|k| self.keys.contains(k));
        if !keys_covered {
            wider.push("keys");
        }
        if !covered(&self.chains, &new.chains) {
            wider.push("chains");
        }
        if !covered(&self.methods, &new.methods) {
            wider.push("methods");
        }
        let limit_raised = match (&self.rate_limit, &new.rate_limit) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(old), Some(new)) => new.per_second > old.per_second || new.burst > old.burst,
        };
        if limit_raised {
            wider.push("rate_limit");
        }
        wider
    }
}

/// The scope a managed client's requests carry (config clients carry none: keys only).
#[derive(Debug)]
pub struct CallerScope {
    chains: Vec<String>,
    methods: Vec<String>,
    limiter: Option<ClientLimiter>,
}

impl CallerScope {
    /// Whether the client may call the signing method `method`.
    pub fn may_call(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| pattern_matches(m, method))
    }

    /// Whether the client may sign for `chain` (`eip155:1`, `bitcoin:regtest`).
    pub fn may_use_chain(&self, chain: &str) -> bool {
        self.chains.is_empty() || self.chains.iter().any(|c| pattern_matches(c, chain))
    }

    /// The client's own rate limit.
    pub fn limiter(&self) -> Option<&ClientLimiter> {
        self.limiter.as_ref()
    }
}

/// One managed client in memory.
#[derive(Debug)]
pub struct ManagedClient {
    pub name: Arc<str>,
    pub grants: Arc<[String]>,
    pub response: Option<ResponseShape>,
    pub scope: Arc<CallerScope>,
    limit: Option<LimitConfig>,
}

/// Why the book could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClientBookError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("client {name}: stored scope is not valid: {reason}")]
    Scope { name: String, reason: String },
}

/// The managed clients in force, and a read-only view of the configured ones.
#[derive(Debug, Default)]
pub struct ClientBook {
    by_token: RwLock<Arc<HashMap<[u8; 32], Arc<ManagedClient>>>>,
    configured: RwLock<Vec<Value>>,
}

/// Parses a stored scope.
pub fn parse_scope(row: &ClientRow) -> Result<ClientScope, ClientBookError> {
    serde_json::from_str(&row.scope).map_err(|e| ClientBookError::Scope {
        name: row.name.clone(),
        reason: e.to_string(),
    })
}

impl ClientBook {
    /// Re-reads the managed clients from `db` and puts them in force. A client whose rate limit
    /// did not change keeps its limiter state (a rotation or unrelated change does not refill
    /// its bucket).
    pub fn load(&self, db: &StateDb) -> Result<(), ClientBookError> {
        let old = self.current();
        let by_name: HashMap<&str, &Arc<ManagedClient>> =
            old.values().map(|c| (&*c.name, c)).collect();
        let mut next = HashMap::new();
        for row in db.clients()? {
            let scope = parse_scope(&row)?;
            let kept = by_name
                .get(row.name.as_str())
                .filter(|c| c.limit == scope.rate_limit && c.scope.chains == scope.chains)
                .filter(|c| c.scope.methods == scope.methods);
            let caller_scope = match kept {
                Some(c) => c.scope.clone(),
                None => Arc::new(CallerScope {
                    chains: scope.chains.clone(),
                    methods: scope.methods.clone(),
                    limiter: scope.rate_limit.as_ref().and_then(ClientLimiter::new),
                }),
            };
            let client = ManagedClient {
                name: row.name.as_str().into(),
                grants: scope.keys.clone().into(),
                response: scope.response,
                scope: caller_scope,
                limit: scope.rate_limit.clone(),
            };
            next.insert(row.token_sha256, Arc::new(client));
        }
        *self.by_token.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(())
    }

    fn current(&self) -> Arc<HashMap<[u8; 32], Arc<ManagedClient>>> {
        self.by_token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The managed client a token hash belongs to.
    pub fn lookup(&self, token_sha256: &[u8; 32]) -> Option<Arc<ManagedClient>> {
        self.current().get(token_sha256).cloned()
    }

    /// Records the clients of the config file in force (at start and on reload).
    pub fn set_configured(&self, clients: &[ClientConfig]) {
        let view = clients
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "source": "config",
                    "keys": c.keys,
                    "cert_dns_name": c.cert_dns_name,
                    "response": c.response,
                })
            })
            .collect();
        *self.configured.write().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// The configured clients (read-only here).
    pub fn configured(&self) -> Vec<Value> {
        self.configured
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The first config-file client whose name a managed client already has: two clients
    /// under one name would make the audit log ambiguous.
    pub fn name_clash<'a>(&self, configured: &'a [ClientConfig]) -> Option<&'a str> {
        let managed: HashSet<Arc<str>> = self.current().values().map(|c| c.name.clone()).collect();
        configured
            .iter()
            .map(|c| c.name.as_str())
            .find(|n| managed.contains(*n))
    }

    /// Names of the configured clients.
    pub fn configured_names(&self) -> HashSet<String> {
        self.configured()
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(
        keys: &[&str],
        chains: &[&str],
        methods: &[&str],
        limit: Option<(f64, u32)>,
    ) -> ClientScope {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        ClientScope {
            keys: v(keys),
            chains: v(chains),
            methods: v(methods),
            rate_limit: limit.map(|(per_second, burst)| LimitConfig { per_second, burst }),
            response: None,
        }
    }

    #[test]
    fn widening_is_told_apart_from_narrowing() {
        let base = scope(
            &["a", "b"],
            &["eip155:1"],
            &["eth_signTransaction"],
            Some((1.0, 5)),
        );
        let narrower = scope(
            &["a"],
            &["eip155:1"],
            &["eth_signTransaction"],
            Some((0.5, 2)),
        );
        assert!(base.widened_by(&narrower).is_empty());
        assert!(narrower.widened_by(&base).len() == 2);
        let more_keys = scope(
            &["a", "c"],
            &["eip155:1"],
            &["eth_signTransaction"],
            Some((1.0, 5)),
        );
        assert_eq!(base.widened_by(&more_keys), ["keys"]);
        let any_chain = scope(&["a"], &[], &["eth_signTransaction"], Some((1.0, 5)));
        assert_eq!(base.widened_by(&any_chain), ["chains"]);
        let any_method = scope(&["a"], &["eip155:1"], &[], Some((1.0, 5)));
        assert_eq!(base.widened_by(&any_method), ["methods"]);
        let unlimited = scope(&["a"], &["eip155:1"], &["eth_signTransaction"], None);
        assert_eq!(base.widened_by(&unlimited), ["rate_limit"]);
        let burstier = scope(
            &["a"],
            &["eip155:1"],
            &["eth_signTransaction"],
            Some((1.0, 6)),
        );
        assert_eq!(base.widened_by(&burstier), ["rate_limit"]);
        let wildcard = scope(&["*"], &["eip155:*"], &[], None);
        assert!(wildcard.widened_by(&base).is_empty());
        assert_eq!(
            scope(&["a"], &["eip155:*"], &[], None).widened_by(&scope(
                &["a"],
                &["bitcoin:main"],
                &[],
                None
            )),
            ["chains"]
        );
    }

    #[test]
    fn scopes_are_validated() {
        assert!(scope(&[], &[], &[], None).validate().is_err());
        assert!(scope(&["a b"], &[], &[], None).validate().is_err());
        assert!(scope(&["a"], &["eip155:1 "], &[], None).validate().is_err());
        assert!(scope(&["a"], &[], &[], Some((0.0, 1))).validate().is_err());
        assert!(
            scope(&["*"], &["eip155:*"], &["personal_sign"], Some((2.0, 3)))
                .validate()
                .is_ok()
        );
    }
}
