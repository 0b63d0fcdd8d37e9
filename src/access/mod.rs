//! Who is calling and what they were granted. Authentication happens at the transport edge
//! (a bearer token becomes a [`Caller`]); the guard only asks a caller whether a key is granted.
//!
//! Also here: employees ([`roles`], [`totp`], secrets at rest in [`totp_vault`]), the [`kill`]
//! switch and request [`limits`].

pub mod clients;
pub mod kill;
pub mod limits;
pub mod roles;
pub mod totp;
pub mod totp_vault;

use std::collections::HashMap;
use std::sync::Arc;

use keyguard_chain::KeyId;
use sha2::{Digest, Sha256};

use crate::config::{patterns_match, AuthMode, Config, ListenerConfig, ResponseShape};
use clients::{CallerScope, ClientBook};

/// An authenticated (or deliberately anonymous) caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Client name (`local` on an `auth = "none"` listener).
    pub name: Arc<str>,
    /// Key patterns granted.
    pub grants: Arc<[String]>,
    /// Response shape this caller gets.
    pub response: ResponseShape,
    /// How long a request that needs approvals waits for them before answering -32002
    /// (zero: answer at once; for simple clients that cannot retry).
    pub approval_wait: std::time::Duration,
    /// Chains, methods and own rate limit of a client managed through the admin API.
    pub scope: Option<Arc<CallerScope>>,
}

impl Caller {
    /// Whether the caller may use `key`.
    pub fn may_use(&self, key: &KeyId) -> bool {
        patterns_match(&self.grants, key)
    }

    /// Whether the caller may call the signing method `method`.
    pub fn may_call(&self, method: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.may_call(method))
    }

    /// Whether the caller may sign for `chain`.
    pub fn may_use_chain(&self, chain: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.may_use_chain(chain))
    }
}

/// The outcome of authenticating one HTTP request or WebSocket upgrade.
#[derive(Clone, Debug)]
pub enum Authentication {
    /// A known caller.
    Caller(Caller),
    /// No usable credential; the reason is shown to the client.
    Refused(&'static str),
}

/// Resolves credentials to callers for one listener.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    anonymous: Caller,
    by_token_hash: HashMap<[u8; 32], Caller>,
    /// Clients identified by the first DNS name of their TLS client certificate.
    by_cert_name: HashMap<String, Caller>,
    /// Clients managed through the admin API, consulted per request.
    managed: Option<Arc<ClientBook>>,
}

/// A listener's authenticator, replaceable on reload without touching open connections.
#[derive(Debug)]
pub struct AuthSwitch(std::sync::RwLock<Arc<Authenticator>>);

impl AuthSwitch {
    /// Starts with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        AuthSwitch(std::sync::RwLock::new(Arc::new(auth)))
    }

    /// The authenticator in force.
    pub fn current(&self) -> Arc<Authenticator> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a new authenticator in force for the next request.
    pub fn replace(&self, auth: Authenticator) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
    }
}

/// SHA-256 of a bearer token, the form in which tokens are configured.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Authenticator {
    /// The authenticator of the `[eth2]` listener: the same clients (tokens, certificate
    /// names); `keys` are the grants of an `auth = "none"` listener.
    pub fn for_eth2(config: &Config, mode: crate::config::AuthMode, keys: &[String]) -> Self {
        let caller = |name: &str, grants: &[String]| Caller {
            name: name.into(),
            grants: grants.to_vec().into(),
            response: crate::config::ResponseShape::default(),
            approval_wait: std::time::Duration::ZERO,
            scope: None,
        };
        Authenticator {
            by_cert_name: config
                .clients
                .iter()
                .filter_map(|c| Some((c.cert_dns_name.clone()?, caller(&c.name, &c.keys))))
                .collect(),
            mode,
            anonymous: caller("local", keys),
            by_token_hash: config
                .clients
                .iter()
                .filter_map(|c| {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(&c.token_sha256, &mut hash).ok()?;
                    Some((hash, caller(&c.name, &c.keys)))
                })
                .collect(),
            managed: None,
        }
    }

    /// Builds the authenticator of `listener` from the configured clients.
    pub fn new(config: &Config, listener: &ListenerConfig) -> Self {
        let by_token_hash = config
            .clients
            .iter()
            .filter_map(|c| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&c.token_sha256, &mut hash).ok()?;
                let caller = Caller {
                    name: c.name.as_str().into(),
                    grants: c.keys.clone().into(),
                    response: c.response.unwrap_or(listener.response),
                    approval_wait: listener.approval_wait(),
                    scope: None,
                };
                Some((hash, caller))
            })
            .collect();
        let by_cert_name = config
            .clients
            .iter()
            .filter_map(|c| {
                let caller = Caller {
                    name: c.name.as_str().into(),
                    grants: c.keys.clone().into(),
                    response: c.response.unwrap_or(listener.response),
                    approval_wait: listener.approval_wait(),
                    scope: None,
                };
                Some((c.cert_dns_name.clone()?, caller))
            })
            .collect();
        Authenticator {
            by_cert_name,
            mode: listener.auth,
            anonymous: Caller {
                name: "local".into(),
                grants: listener.keys.clone().into(),
                response: listener.response,
                approval_wait: listener.approval_wait(),
                scope: None,
            },
            by_token_hash,
            managed: None,
        }
    }

    /// Whether this listener serves anyone who connects (`auth = "none"`): then the edge also
    /// checks `Host` and `Origin`, since the only credential is being on this machine.
    pub fn is_open(&self) -> bool {
        self.mode == AuthMode::None
    }

    /// Also accepts the bearer tokens of the clients in `book` (read at every request).
    pub fn with_managed(mut self, book: Arc<ClientBook>) -> Self {
        self.managed = Some(book);
        self
    }

    fn by_token(&self, token: &str) -> Option<Caller> {
        let hash = token_hash(token);
        if let Some(c) = self.by_token_hash.get(&hash) {
            return Some(c.clone());
        }
        let managed = self.managed.as_ref()?.lookup(&hash)?;
        Some(Caller {
            name: managed.name.clone(),
            grants: managed.grants.clone(),
            response: managed.response.unwrap_or(self.anonymous.response),
            approval_wait: self.anonymous.approval_wait,
            scope: Some(managed.scope.clone()),
        })
    }

    /// Authenticates a request on a TLS connection: a client certificate whose first DNS name
    /// is a configured `cert_dns_name` identifies the client; otherwise the bearer token does.
    pub fn authenticate_with_cert(
        &self,
        cert_name: Option<&str>,
        authorization: Option<&[u8]>,
    ) -> Authentication {
        match cert_name.and_then(|n| self.by_cert_name.get(n)) {
            Some(caller) if self.mode == AuthMode::Bearer => Authentication::Caller(caller.clone()),
            _ => self.authenticate(authorization),
        }
    }

    /// Authenticates from the value of an `Authorization` header, if any.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Authentication {
        match self.mode {
            AuthMode::None => Authentication::Caller(self.anonymous.clone()),
            AuthMode::Bearer => {
                let Some(header) = authorization else {
                    return Authentication::Refused("missing Authorization: Bearer token");
                };
                let token = std::str::from_utf8(header)
                    .ok()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::trim);
                match token.and_then(|t| self.by_token(t)) {
                    Some(caller) => Authentication::Caller(caller),
                    None => Authentication::Refused("invalid bearer token"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
        [data]
        dir = "var"
        [keystore]
        backend = "software"
        [[listeners]]
        name = "rpc"
        protocol = "evm-jsonrpc"
        address = "10.0.0.1:8550"
        chain_id = 1
        auth = "bearer"
        [[clients]]
        name = "batcher"
        token_sha256 = "67d421fb2e91fc94a62e63c8f285bb7203e6a8e6c325b6daf93ee26ecff5c869"
        keys = ["batcher-key"]
        response = "geth"
    "#;

    #[test]
    fn bearer_tokens_resolve_to_their_client_only() {
        let config = Config::parse(Path::new("t.toml"), CONFIG).unwrap();
        let auth = Authenticator::new(&config, &config.listeners[0]);
        // sha256("kg-test-batcher-token")
        let Authentication::Caller(c) = auth.authenticate(Some(b"Bearer kg-test-batcher-token"))
        else {
            panic!("token refused");
        };
        assert_eq!(&*c.name, "batcher");
        assert_eq!(c.response, ResponseShape::Geth);
        assert!(c.may_use(&KeyId::new("batcher-key").unwrap()));
        assert!(!c.may_use(&KeyId::new("treasury").unwrap()));
        assert!(matches!(
            auth.authenticate(None),
            Authentication::Refused(_)
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Bearer wrong")),
            Authentication::Refused(_)
        ));
        assert!(matches!(
            auth.authenticate(Some(b"kg-test-batcher-token")),
            Authentication::Refused(_)
        ));
    }
}
