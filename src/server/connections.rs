//! The accept loop of a JSON-RPC listener (plain or TLS): connection caps per peer address and
//! in total, an idle timeout, and the edge layer built per connection with the peer's address.
//!
//! The attack stopped: 4,096 WebSocket upgrades without a token were accepted and held until a
//! valid client got HTTP 429 (and under a soft limit of 1,024 descriptors, about 1,000 were
//! enough). Bearer listeners now refuse upgrades without a credential (see `http_edge`), and
//! here one address holds at most `per_peer` connections, the listener `max`, and a connection
//! that moves no byte for `idle_timeout_secs` is closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonrpsee::server::{Methods, ServerConfig, StopHandle};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::edge_io::EdgeIo;
use super::http_edge::EdgeLayer;
use crate::access::AuthSwitch;
use crate::config::ConnectionLimits;

/// Open connections, in total and per peer address.
#[derive(Debug, Default)]
struct Counts {
    total: u32,
    by_peer: HashMap<IpAddr, u32>,
}

/// Hands out connection slots within the caps.
#[derive(Debug)]
pub(crate) struct Slots {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

/// One held connection slot, given back when the connection ends.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Slots {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Slots> {
        Arc::new(Slots {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A slot for `peer`, or `None` when the listener or this peer is at its cap.
    pub(crate) fn acquire(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.by_peer.get(&peer).copied().unwrap_or(0);
        if c.total >= self.limits.max || mine >= self.limits.per_peer {
            return None;
        }
        c.total += 1;
        c.by_peer.insert(peer, mine + 1);
        Some(Slot {
            slots: self.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.by_peer.remove(&self.peer);
            }
        }
    }
}

/// What every connection of one listener shares.
#[derive(Clone)]
pub(crate) struct Listener {
    pub(crate) methods: Methods,
    pub(crate) server_config: ServerConfig,
    pub(crate) auth: Arc<AuthSwitch>,
    pub(crate) max_body: usize,
    pub(crate) tls: Option<TlsAcceptor>,
    /// The idle timeout, already raised above the approval wait.
    pub(crate) idle: Duration,
    pub(crate) slots: Arc<Slots>,
}

/// Accepts connections until `stop` fires.
pub(crate) async fn serve(tcp: TcpListener, listener: Listener, stop: StopHandle) {
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = stop.clone().shutdown() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors: wait instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = listener.slots.acquire(peer.ip()) else {
            tracing::debug!(%peer, "connection cap reached; connection closed");
            drop(stream);
            continue;
        };
        let (listener, stop) = (listener.clone(), stop.clone());
        tokio::spawn(async move {
            connection(stream, peer, listener, stop).await;
            drop(slot);
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: Listener,
    stop: StopHandle,
) {
    let _ = tcp.set_nodelay(true);
    let Listener {
        methods,
        server_config,
        auth,
        max_body,
        tls,
        idle,
        ..
    } = listener;
    let build = |cert_name: Option<Arc<str>>| {
        let edge = EdgeLayer {
            auth: auth.clone(),
            max_body,
            cert_name,
            peer: Some(peer),
        };
        jsonrpsee::server::Server::builder()
            .set_config(server_config.clone())
            .set_http_middleware(tower::ServiceBuilder::new().layer(edge))
            .to_service_builder()
            .build(methods.clone(), stop.clone())
    };
    let result = match tls {
        None => {
            let io = EdgeIo::new(tcp, idle, max_body);
            jsonrpsee::server::serve_with_graceful_shutdown(io, build(None), stop.shutdown()).await
        }
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(super::tls::first_dns_name);
            tracing::debug!(%peer, identity = ?identity, "TLS client connected");
            let io = EdgeIo::new(stream, idle, max_body);
            let service = build(identity.map(Arc::from));
            jsonrpsee::server::serve_with_graceful_shutdown(io, service, stop.shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_per_peer_and_in_total_and_come_back() {
        let slots = Slots::new(ConnectionLimits {
            max: 3,
            per_peer: 2,
            idle_timeout_secs: 1,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert!(slots.acquire(a).is_none(), "per-peer cap");
        let _b1 = slots.acquire(b).unwrap();
        assert!(slots.acquire(b).is_none(), "total cap");
        drop(a1);
        assert!(
            slots.acquire(b).is_some(),
            "a slot comes back when its connection ends"
        );
    }
}
