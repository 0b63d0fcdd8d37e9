//! Console sessions: a random id in a `__Host-` cookie (HttpOnly, Secure, SameSite=Strict),
//! the user and a CSRF token kept server-side, an idle timeout and a hard lifetime.
//!
//! The attacks stopped: session fixation (a new id is made at every sign-in and the id the
//! browser came with is dropped), cross-site requests (SameSite=Strict, the Origin check, and a
//! per-session CSRF token on every form), a stolen cookie used forever (idle timeout and
//! lifetime), and memory growth from a sign-in flood (bounded tables).

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore;
use subtle::ConstantTimeEq;

/// The session cookie's name; `__Host-` makes browsers refuse it unless Secure, Path=/ and
/// without Domain, so a sibling host cannot plant one.
pub const SESSION_COOKIE: &str = "__Host-kg_session";
/// The cookie of a sign-in or enrolment in progress (binds the WebAuthn challenge to the
/// browser that asked for it).
pub const FLOW_COOKIE: &str = "__Host-kg_flow";

/// Most live sessions; past that, expired ones are dropped, then the oldest.
const MAX_SESSIONS: usize = 1024;

/// A random 256-bit token, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    created_ms: i64,
    last_ms: i64,
}

impl Session {
    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, token: &str) -> bool {
        !token.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The live sessions.
#[derive(Debug)]
pub struct Sessions {
    idle_ms: i64,
    lifetime_ms: i64,
    table: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(idle_ms: i64, lifetime_ms: i64) -> Self {
        Sessions {
            idle_ms,
            lifetime_ms,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self, s: &Session, now: i64) -> bool {
        now - s.last_ms < self.idle_ms && now - s.created_ms < self.lifetime_ms
    }

    /// Signs `user` in: a fresh id (never the one the browser sent, which is dropped) and a
    /// fresh CSRF token. Returns the new id.
    pub fn create(&self, user: &str, previous: Option<&str>, now: i64) -> String {
        let mut t = self.lock();
        if let Some(old) = previous {
            t.remove(old);
        }
        if t.len() >= MAX_SESSIONS {
            t.retain(|_, s| {
                now - s.last_ms < self.idle_ms && now - s.created_ms < self.lifetime_ms
            });
        }
        if t.len() >= MAX_SESSIONS {
            if let Some(oldest) = t
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone())
            {
                t.remove(&oldest);
            }
        }
        let id = random_token();
        t.insert(
            id.clone(),
            Session {
                user: user.to_owned(),
                csrf: random_token(),
                created_ms: now,
                last_ms: now,
            },
        );
        id
    }

    /// The live session with this id (touching it), or `None` (an expired one is dropped).
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        self.lookup(id, now, true)
    }

    /// Like [`Sessions::get`] without counting as activity: an open page's live updates must
    /// not keep an unattended session signed in past its idle timeout.
    pub fn peek(&self, id: &str, now: i64) -> Option<Session> {
        self.lookup(id, now, false)
    }

    fn lookup(&self, id: &str, now: i64, touch: bool) -> Option<Session> {
        let mut t = self.lock();
        let live = t.get(id).map(|s| self.live(s, now))?;
        if !live {
            t.remove(id);
            return None;
        }
        let s = t.get_mut(id)?;
        if touch {
            s.last_ms = now;
        }
        Some(s.clone())
    }

    /// Signs out.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Signs out every session of `user` (removed, or its roles changed).
    pub fn remove_user(&self, user: &str) {
        self.lock().retain(|_, s| s.user != user);
    }
}

/// The `Set-Cookie` value of a `__Host-` cookie.
pub fn set_cookie(name: &str, value: &str, max_age_s: i64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_s}")
}

/// The value of cookie `name` in a `Cookie` header (first occurrence only: a second cookie of
/// the same name, e.g. planted for a parent domain, is ignored).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_makes_a_new_id_and_drops_the_old_one() {
        let s = Sessions::new(60_000, 3_600_000);
        let planted = s.create("mallory", None, 0);
        let id = s.create("ann", Some(&planted), 1);
        assert_ne!(id, planted);
        assert!(s.get(&planted, 2).is_none(), "the fixated id is gone");
        assert_eq!(s.get(&id, 2).unwrap().user, "ann");
    }

    #[test]
    fn idle_and_lifetime_expire() {
        let s = Sessions::new(1_000, 5_000);
        let id = s.create("ann", None, 0);
        assert!(s.get(&id, 900).is_some());
        assert!(s.get(&id, 1_800).is_some(), "touched at 900, so still live");
        assert!(s.get(&id, 2_801).is_none(), "idle");
        let id = s.create("ann", None, 0);
        for t in (500..5_000).step_by(500) {
            assert!(s.get(&id, t).is_some());
        }
        assert!(s.get(&id, 5_000).is_none(), "lifetime");
        // Live updates do not keep a session alive.
        let id = s.create("ann", None, 0);
        assert!(s.peek(&id, 900).is_some());
        assert!(s.peek(&id, 1_000).is_none(), "peek did not touch it");
    }

    #[test]
    fn csrf_and_cookie_parsing() {
        let s = Sessions::new(1_000, 5_000);
        let id = s.create("ann", None, 0);
        let session = s.get(&id, 1).unwrap();
        assert!(session.csrf_ok(&session.csrf.clone()));
        assert!(!session.csrf_ok(""));
        assert!(!session.csrf_ok(&random_token()));
        let header = format!(
            "a=b; {SESSION_COOKIE}={id}; {SESSION_COOKIE}={}",
            random_token()
        );
        assert_eq!(cookie(&header, SESSION_COOKIE), Some(id.as_str()));
        assert_eq!(cookie("__Host-kg_session=short", SESSION_COOKIE), None);
    }
}
