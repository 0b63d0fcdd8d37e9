//! The mock node's side of the privval connection: it listens (as a CometBFT node's
//! `priv_validator_laddr` does) and keyguard dials in, over a Unix socket or TCP with
//! SecretConnection (cometbft-p2p), nothing from the code under test.

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use cometbft_p2p::{IdentitySecret, ReadMsg, SecretConnection, WriteMsg};
use prost::Message;

/// Where the mock node listens (`priv_validator_laddr`).
pub enum NodeListener {
    Tcp(TcpListener, Box<IdentitySecret>),
    Unix(UnixListener),
}

impl NodeListener {
    /// A TCP listener with a fresh node identity; returns the `tcp://<id>@host:port` address.
    pub fn tcp() -> (NodeListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let identity = IdentitySecret::generate(&mut cometbft_p2p::rand_core::OsRng);
        let id = cometbft_p2p::PublicKey::from(&identity).peer_id();
        let addr = format!("tcp://{id}@{}", l.local_addr().unwrap());
        (NodeListener::Tcp(l, Box::new(identity)), addr)
    }

    /// A Unix socket listener at `path`; returns the `unix://` address.
    pub fn unix(path: &Path) -> (NodeListener, String) {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        (NodeListener::Unix(l), format!("unix://{}", path.display()))
    }

    /// Waits up to `within` for keyguard to dial in and finish the handshake.
    pub fn try_accept(&self, within: Duration) -> Option<MockConn> {
        let deadline = Instant::now() + within;
        let set = |nb| match self {
            NodeListener::Tcp(l, _) => l.set_nonblocking(nb).unwrap(),
            NodeListener::Unix(l) => l.set_nonblocking(nb).unwrap(),
        };
        set(true);
        let conn = loop {
            let got = match self {
                NodeListener::Tcp(l, id) => l.accept().map(|(s, _)| {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.set_nodelay(true).unwrap();
                    SecretConnection::new(s, id.as_ref())
                        .ok()
                        .map(|c| MockConn::Secret(Box::new(c)))
                }),
                NodeListener::Unix(l) => l.accept().map(|(s, _)| {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    Some(MockConn::Unix(s))
                }),
            };
            match got {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break None,
            }
        };
        set(false);
        conn
    }

    /// Waits for keyguard to dial in.
    pub fn accept(&self) -> MockConn {
        match self {
            NodeListener::Tcp(l, identity) => loop {
                // A dial keyguard already gave up on (handshake timeout) is skipped.
                let (s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.set_nodelay(true).unwrap();
                if let Ok(c) = SecretConnection::new(s, identity.as_ref()) {
                    break MockConn::Secret(Box::new(c));
                }
            },
            NodeListener::Unix(l) => {
                let (s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                MockConn::Unix(s)
            }
        }
    }
}

pub enum MockConn {
    Secret(Box<SecretConnection<TcpStream>>),
    Unix(UnixStream),
}

impl MockConn {
    /// Sends one request and reads one response; `None` if the connection failed.
    pub fn call<Req: Message, Resp: Message + Default>(&mut self, req: &Req) -> Option<Resp> {
        match self {
            MockConn::Secret(c) => {
                WriteMsg::<Req>::write_msg(c.as_mut(), req).ok()?;
                c.flush().ok()?;
                ReadMsg::<Resp>::read_msg(c.as_mut()).ok()
            }
            MockConn::Unix(c) => {
                WriteMsg::<Req>::write_msg(c, req).ok()?;
                ReadMsg::<Resp>::read_msg(c).ok()
            }
        }
    }
}
