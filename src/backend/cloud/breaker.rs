//! The circuit breaker of one cloud backend. After `threshold` consecutive outages (no answer,
//! timeout, server error) every request fails at once with `-32007` for `open_for`, instead of
//! each one waiting out its deadline against a service that is down; then a single request
//! probes, and its outcome closes or re-opens the circuit.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One backend's breaker.
#[derive(Debug)]
pub struct Breaker {
    backend: &'static str,
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    reason: String,
}

/// Permission for one call; report how it ended (dropping it unreported frees the probe slot).
#[derive(Debug)]
pub struct Admit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(backend: &'static str, threshold: u32, open_for: Duration) -> Self {
        Self {
            backend,
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May a call go out now? `Err` (why not) while open, or while the one probe is out.
    pub fn admit(&self) -> Result<Admit<'_>, String> {
        let mut s = self.state();
        let Some(until) = s.open_until else {
            return Ok(Admit {
                breaker: self,
                probe: false,
                done: false,
            });
        };
        if Instant::now() < until {
            return Err(format!(
                "{} circuit open after {} consecutive failures (last: {}); retrying in {} ms",
                self.backend,
                s.failures,
                s.reason,
                until.saturating_duration_since(Instant::now()).as_millis()
            ));
        }
        if s.probing {
            return Err(format!(
                "{} circuit half-open: waiting for the probe request (last failure: {})",
                self.backend, s.reason
            ));
        }
        s.probing = true;
        Ok(Admit {
            breaker: self,
            probe: true,
            done: false,
        })
    }

    /// `Err(reason)` while the circuit is open (for `/ready`).
    pub fn health(&self) -> Result<(), String> {
        let s = self.state();
        match s.open_until {
            Some(until) if Instant::now() < until => Err(format!(
                "{} unavailable after {} consecutive failures: {}",
                self.backend, s.failures, s.reason
            )),
            _ => Ok(()),
        }
    }
}

impl Admit<'_> {
    /// The service answered (a signature, a refusal, or throttling): close the circuit.
    pub fn success(mut self) {
        self.done = true;
        let mut s = self.breaker.state();
        s.failures = 0;
        if self.probe {
            s.probing = false;
        }
        if s.open_until.take().is_some() {
            tracing::info!(
                backend = self.breaker.backend,
                "cloud: service answers again; circuit closed"
            );
            crate::metrics::cloud_event(self.breaker.backend, "breaker_closed");
            crate::metrics::cloud_available(self.breaker.backend, true);
        }
    }

    /// The service did not answer properly: count it, open the circuit at the threshold (or
    /// at once when this was the probe).
    pub fn failure(mut self, reason: &str) {
        self.done = true;
        let mut s = self.breaker.state();
        s.failures = s.failures.saturating_add(1);
        s.reason = reason.chars().take(200).collect();
        if self.probe {
            s.probing = false;
        }
        if self.probe || s.failures >= self.breaker.threshold {
            let was_open = s.open_until.is_some();
            s.open_until = Some(Instant::now() + self.breaker.open_for);
            if !was_open {
                tracing::error!(backend = self.breaker.backend, failures = s.failures, reason = %s.reason,
                    "cloud: circuit open; requests fail at once until a probe succeeds");
                crate::metrics::cloud_event(self.breaker.backend, "breaker_opened");
                crate::metrics::cloud_available(self.breaker.backend, false);
            }
        }
    }

    /// No call went out (rate limit): free the probe slot without a verdict.
    pub fn abandon(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if !self.done {
            self.done = true;
            if self.probe {
                self.breaker.state().probing = false;
            }
        }
    }
}

impl Drop for Admit<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_and_a_probe_closes_it() {
        let b = Breaker::new("test", 3, Duration::from_millis(30));
        for _ in 0..2 {
            b.admit().unwrap().failure("down");
        }
        assert!(b.health().is_ok(), "two failures are below the threshold");
        b.admit().unwrap().failure("down");
        let refused = b.admit().unwrap_err();
        assert!(
            refused.contains("circuit open") && refused.contains("down"),
            "{refused}"
        );
        assert!(b.health().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().unwrap();
        assert!(
            b.admit().unwrap_err().contains("half-open"),
            "one probe at a time"
        );
        probe.success();
        assert!(b.health().is_ok());
        b.admit().unwrap().success();
    }

    #[test]
    fn a_failed_probe_reopens_and_a_success_resets_the_count() {
        let b = Breaker::new("test", 2, Duration::from_millis(20));
        b.admit().unwrap().failure("x");
        b.admit().unwrap().success();
        b.admit().unwrap().failure("x");
        assert!(b.admit().is_ok(), "the success reset the count: 1 < 2");
        b.admit().unwrap().failure("x");
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(30));
        b.admit().unwrap().failure("still down");
        assert!(b.admit().unwrap_err().contains("still down"));
    }

    #[test]
    fn a_dropped_probe_frees_the_slot() {
        let b = Breaker::new("test", 1, Duration::from_millis(10));
        b.admit().unwrap().failure("x");
        std::thread::sleep(Duration::from_millis(20));
        drop(b.admit().unwrap());
        assert!(
            b.admit().is_ok(),
            "a cancelled probe must not wedge the breaker half-open"
        );
    }
}
