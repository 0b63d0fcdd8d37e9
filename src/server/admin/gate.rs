//! What one peer may do to the admin API before anybody is authenticated: hold connections,
//! send requests, fail sign-ins. In memory, bounded, checked before any user is looked up.
//!
//! The attacks stopped: a peer holding every connection (descriptors the signing listeners
//! need), a request stream filling the audit log, and a stream of wrong codes aimed at a named
//! user to keep them locked out. Failed sign-ins are counted per peer first
//! (`admin.peer_throttle`, all users) and the TOTP lockout of a TCP peer is keyed on
//! (peer, user): the attacker's own peer is locked, the real user on another peer is not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::{parse_duration, AdminListenerLimits};
use crate::store::now_ms;

/// Most peers and (peer, user) pairs remembered; beyond, stale entries are dropped first and
/// then new peers share one entry (so a spoofed-address flood cannot grow memory).
const MAX_ENTRIES: usize = 8192;

/// Who is on the other end of an admin connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The Unix socket (only the service user can open it).
    Local,
    /// A TCP peer, by address.
    Tcp { ip: IpAddr },
}

impl Peer {
    /// The audit budget source of this peer.
    pub fn source(&self) -> String {
        match self {
            Peer::Local => "admin-local".into(),
            Peer::Tcp { ip } => format!("admin-peer:{ip}"),
        }
    }

    fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Local => None,
            Peer::Tcp { ip } => Some(*ip),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct PeerState {
    connections: usize,
    tokens: f64,
    last_ms: i64,
    failures: u32,
    window_start_ms: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct PairState {
    failures: u32,
    locked_until_ms: i64,
    last_ms: i64,
}

#[derive(Debug, Default)]
struct Tables {
    peers: HashMap<IpAddr, PeerState>,
    pairs: HashMap<(IpAddr, String), PairState>,
    connections: usize,
}

/// The per-peer state of the admin listener.
#[derive(Debug)]
pub struct PeerGate {
    limits: AdminListenerLimits,
    window_ms: i64,
    max_failures: u32,
    tables: Mutex<Tables>,
}

/// An open TCP connection counted against the caps; released when dropped.
#[derive(Debug)]
pub struct Connection {
    gate: Arc<PeerGate>,
    ip: IpAddr,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut t = self.gate.lock();
        t.connections = t.connections.saturating_sub(1);
        if let Some(p) = t.peers.get_mut(&self.ip) {
            p.connections = p.connections.saturating_sub(1);
        }
    }
}

/// Why a peer is refused before its request is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    /// Over its request rate (`admin.peer_rate`).
    Rate,
    /// Too many failed sign-ins in the window (`admin.peer_throttle`).
    Throttled,
}

impl PeerRefusal {
    /// The rule name.
    pub fn rule(self) -> &'static str {
        match self {
            PeerRefusal::Rate => "admin.peer_rate",
            PeerRefusal::Throttled => "admin.peer_throttle",
        }
    }
}

fn prune<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, stale: impl Fn(&V) -> bool) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, v| !stale(v));
    }
}

impl PeerGate {
    /// The gate for `limits`; `lockout` and `max_failures` are the TOTP lockout settings.
    pub fn new(limits: AdminListenerLimits, lockout: &str, max_failures: u32) -> Self {
        let window_ms = parse_duration(lockout).map_or(900_000, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        });
        PeerGate {
            limits,
            window_ms,
            max_failures,
            tables: Mutex::new(Tables::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listener's limits.
    pub fn limits(&self) -> &AdminListenerLimits {
        &self.limits
    }

    /// Counts a new connection from `ip`, or refuses it (`admin.connection_cap`).
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<Connection> {
        let mut t = self.lock();
        if t.connections >= self.limits.max_connections {
            return None;
        }
        let now = now_ms();
        let window = self.window_ms;
        prune(&mut t.peers, |p| {
            p.connections == 0 && now - p.last_ms > 60_000 && now - p.window_start_ms > window
        });
        if !t.peers.contains_key(&ip) && t.peers.len() >= MAX_ENTRIES {
            return None;
        }
        let burst = f64::from(self.limits.peer_burst);
        let peer = t.peers.entry(ip).or_insert_with(|| PeerState {
            tokens: burst,
            last_ms: now,
            ..PeerState::default()
        });
        if peer.connections >= self.limits.max_connections_per_peer {
            return None;
        }
        peer.connections += 1;
        t.connections += 1;
        Some(Connection {
            gate: self.clone(),
            ip,
        })
    }

    /// Takes one request of `peer`'s rate, and refuses a peer throttled for failed sign-ins.
    /// The local socket is never limited here.
    pub fn admit(&self, peer: Peer) -> Result<(), PeerRefusal> {
        let Some(ip) = peer.ip() else {
            return Ok(());
        };
        let now = now_ms();
        let burst = f64::from(self.limits.peer_burst);
        let mut t = self.lock();
        let state = t.peers.entry(ip).or_insert_with(|| PeerState {
            tokens: burst,
            last_ms: now,
            ..PeerState::default()
        });
        if now - state.window_start_ms >= self.window_ms {
            state.failures = 0;
            state.window_start_ms = now;
        }
        if state.failures >= self.limits.peer_auth_failures {
            return Err(PeerRefusal::Throttled);
        }
        let elapsed = (now - state.last_ms).max(0) as f64 / 1000.0;
        state.tokens = (state.tokens + elapsed * self.limits.peer_requests_per_second).min(burst);
        state.last_ms = now;
        if state.tokens < 1.0 {
            return Err(PeerRefusal::Rate);
        }
        state.tokens -= 1.0;
        Ok(())
    }

    /// Whether `user` is locked for this TCP `peer` (the local socket uses the durable lock).
    pub fn locked(&self, peer: Peer, user: &str) -> bool {
        let Some(ip) = peer.ip() else {
            return false;
        };
        let now = now_ms();
        self.lock()
            .pairs
            .get(&(ip, user.to_owned()))
            .is_some_and(|p| p.locked_until_ms > now)
    }

    /// Records a failed sign-in of `peer` as `user`; true if (peer, user) is now locked.
    /// Like the durable lock, once a lock has expired the next failure locks again at once.
    pub fn failed(&self, peer: Peer, user: &str) -> bool {
        let Some(ip) = peer.ip() else {
            return false;
        };
        let now = now_ms();
        let window = self.window_ms;
        let mut t = self.lock();
        if t.peers.contains_key(&ip) || t.peers.len() < MAX_ENTRIES {
            let burst = f64::from(self.limits.peer_burst);
            let p = t.peers.entry(ip).or_insert_with(|| PeerState {
                tokens: burst,
                last_ms: now,
                window_start_ms: now,
                ..PeerState::default()
            });
            p.failures = p.failures.saturating_add(1);
        }
        prune(&mut t.pairs, |p| {
            p.locked_until_ms <= now && now - p.last_ms > window
        });
        let key = if t.pairs.len() >= MAX_ENTRIES {
            (ip, String::new())
        } else {
            (ip, user.chars().take(64).collect())
        };
        let pair = t.pairs.entry(key).or_default();
        pair.failures = pair.failures.saturating_add(1);
        pair.last_ms = now;
        if pair.failures >= self.max_failures {
            pair.locked_until_ms = now.saturating_add(window);
            return true;
        }
        false
    }

    /// A correct sign-in clears (peer, user)'s count.
    pub fn succeeded(&self, peer: Peer, user: &str) {
        if let Some(ip) = peer.ip() {
            self.lock().pairs.remove(&(ip, user.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Arc<PeerGate> {
        Arc::new(PeerGate::new(
            AdminListenerLimits {
                max_connections: 3,
                max_connections_per_peer: 2,
                peer_burst: 5,
                peer_requests_per_second: 0.001,
                peer_auth_failures: 6,
                ..AdminListenerLimits::default()
            },
            "15m",
            3,
        ))
    }

    #[test]
    fn connection_caps_per_peer_and_overall() {
        let g = gate();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = g.connect(a).unwrap();
        let _a2 = g.connect(a).unwrap();
        assert!(g.connect(a).is_none(), "per-peer cap");
        let _b1 = g.connect(b).unwrap();
        assert!(g.connect(c).is_none(), "overall cap");
        drop(a1);
        assert!(g.connect(c).is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn a_flooding_peer_locks_only_itself() {
        let g = gate();
        let attacker = Peer::Tcp {
            ip: "10.0.0.66".parse().unwrap(),
        };
        let admin = Peer::Tcp {
            ip: "10.0.0.7".parse().unwrap(),
        };
        assert!(!g.failed(attacker, "ann"));
        assert!(!g.failed(attacker, "ann"));
        assert!(g.failed(attacker, "ann"));
        assert!(g.locked(attacker, "ann"));
        // The real user elsewhere is not locked; the local socket never is by this gate.
        assert!(!g.locked(admin, "ann"));
        assert!(!g.locked(Peer::Local, "ann"));
        // The peer itself is throttled for every user after `peer_auth_failures`.
        for user in ["bob", "carl", "dan"] {
            assert_eq!(g.admit(attacker), Ok(()));
            g.failed(attacker, user);
        }
        assert_eq!(g.admit(attacker), Err(PeerRefusal::Throttled));
        assert_eq!(g.admit(admin), Ok(()));
        g.succeeded(admin, "ann");
    }

    #[test]
    fn request_rate_per_peer() {
        let g = gate();
        let p = Peer::Tcp {
            ip: "10.0.0.9".parse().unwrap(),
        };
        let ok = (0..20).filter(|_| g.admit(p).is_ok()).count();
        assert_eq!(ok, 5);
        assert_eq!(g.admit(p), Err(PeerRefusal::Rate));
        assert!((0..20).all(|_| g.admit(Peer::Local).is_ok()));
    }
}
