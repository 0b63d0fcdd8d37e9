//! Request rate limits per client, per key and per method (`governor`, GCRA). They run before
//! any decoding, so a flood of junk costs a hash-map lookup, and they bound how many signatures
//! a stolen credential can collect.

use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};

pub use crate::config::quota;
use crate::config::{LimitConfig, RateLimitsConfig};

/// Which limit refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    Client,
    Key,
    Method,
}

impl LimitScope {
    /// The stable rule name (`rate_limit.client` ...).
    pub fn rule(self) -> &'static str {
        match self {
            LimitScope::Client => "rate_limit.client",
            LimitScope::Key => "rate_limit.key",
            LimitScope::Method => "rate_limit.method",
        }
    }
}

/// A refusal: which limit, and when the next request would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub scope: LimitScope,
    pub retry_after: Duration,
}

/// The configured limiters; rebuilt (and so reset) on reload.
pub struct RateLimits {
    client: Option<DefaultKeyedRateLimiter<String>>,
    key: Option<DefaultKeyedRateLimiter<String>>,
    method: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("client", &self.client.is_some())
            .field("key", &self.key.is_some())
            .field("method", &self.method.is_some())
            .finish()
    }
}

fn limiter(limit: Option<&LimitConfig>) -> Option<DefaultKeyedRateLimiter<String>> {
    limit.and_then(quota).map(RateLimiter::keyed)
}

impl RateLimits {
    /// Limiters for a configuration (none configured: nothing is limited).
    pub fn new(config: Option<&RateLimitsConfig>) -> Self {
        RateLimits {
            client: limiter(config.and_then(|c| c.per_client.as_ref())),
            key: limiter(config.and_then(|c| c.per_key.as_ref())),
            method: limiter(config.and_then(|c| c.per_method.as_ref())),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the per-client limit only (none configured: always true). For
    /// callers that must not spend the shared per-method or per-key budgets of real clients.
    pub fn client_allows(&self, client: &str) -> bool {
        self.client
            .as_ref()
            .is_none_or(|l| l.check_key(&client.to_owned()).is_ok())
    }

    /// Takes one request from the per-key limit only: for a key first known after decoding
    /// (the pipeline charges client and method before decoding).
    pub fn check_key(&self, key: &str) -> Result<(), Limited> {
        let Some(limiter) = &self.key else {
            return Ok(());
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| Limited {
                scope: LimitScope::Key,
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Takes one request from each applicable limit; the first that is empty refuses. `method`
    /// is the method family (aliases share a budget).
    pub fn check(&self, client: &str, method: &str, key: Option<&str>) -> Result<(), Limited> {
        let checks = [
            (LimitScope::Client, &self.client, Some(client)),
            (LimitScope::Method, &self.method, Some(method)),
            (LimitScope::Key, &self.key, key),
        ];
        for (scope, limiter, id) in checks {
            let (Some(limiter), Some(id)) = (limiter, id) else {
                continue;
            };
            if let Err(not_until) = limiter.check_key(&id.to_owned()) {
                return Err(Limited {
                    scope,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                });
            }
        }
        Ok(())
    }
}

/// The rate limit of one managed client (its own quota, on top of the configured limits).
pub struct ClientLimiter {
    limit: LimitConfig,
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl std::fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl ClientLimiter {
    /// A full bucket for `limit`; `None` for a limit that is not a valid quota.
    pub fn new(limit: &LimitConfig) -> Option<Self> {
        Some(ClientLimiter {
            limit: limit.clone(),
            limiter: RateLimiter::direct(quota(limit)?),
            clock: DefaultClock::default(),
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> &LimitConfig {
        &self.limit
    }

    /// Takes one request; refuses with the time until the next one would pass.
    pub fn check(&self) -> Result<(), Limited> {
        self.limiter.check().map_err(|not_until| Limited {
            scope: LimitScope::Client,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_the_quota_and_scopes_are_separate() {
        let cfg = RateLimitsConfig {
            per_client: Some(LimitConfig {
                per_second: 0.1,
                burst: 3,
            }),
            per_key: None,
            per_method: None,
        };
        let limits = RateLimits::new(Some(&cfg));
        let ok = (0..10)
            .filter(|_| limits.check("a", "m", None).is_ok())
            .count();
        assert_eq!(ok, 3);
        let refused = limits.check("a", "m", None).unwrap_err();
        assert_eq!(refused.scope, LimitScope::Client);
        assert!(refused.retry_after > Duration::from_secs(5));
        assert!(limits.check("b", "m", None).is_ok());
        assert!(RateLimits::new(None).check("a", "m", Some("k")).is_ok());
    }

    #[test]
    fn client_allows_spends_only_the_client_budget() {
        let one = LimitConfig {
            per_second: 0.1,
            burst: 1,
        };
        let cfg = RateLimitsConfig {
            per_client: Some(one.clone()),
            per_key: None,
            per_method: Some(one),
        };
        let limits = RateLimits::new(Some(&cfg));
        assert!(limits.client_allows("unauthenticated"));
        assert!(!limits.client_allows("unauthenticated"));
        // The method budget real clients share is untouched.
        assert!(limits.check("real", "m", None).is_ok());
        assert!(RateLimits::new(None).client_allows("unauthenticated"));
    }
}
