//! One privval connection: SecretConnection over TCP (from `cometbft-p2p`) or plain
//! length-prefixed frames over a Unix socket (prost's length delimiter), reading in the schema
//! of the configured wire version.

use std::time::Duration;

use cometbft_p2p::{AsyncReadMsg, AsyncSecretConnection, AsyncWriteMsg, IdentitySecret, PeerId};
use keyguard_cometbft::proto::{v0_38, v1};
use keyguard_cometbft::wire::{self, DecodeError, Request, WireMessage, WireVersion};
use keyguard_cometbft::MAX_MESSAGE_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::config::PrivvalAddr;

/// How long a connect or handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Socket failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// SecretConnection failure (handshake, decryption, framing).
    #[error("secret connection: {0}")]
    Secret(String),
    /// The node id did not match the pinned one.
    #[error("node id mismatch: expected {expected}, got {actual}")]
    NodeId {
        /// Pinned id.
        expected: String,
        /// Presented id.
        actual: String,
    },
    /// Connect or handshake took too long.
    #[error("timed out")]
    Timeout,
    /// A message keyguard cannot answer (the connection is dropped).
    #[error(transparent)]
    Decode(DecodeError),
}

fn secret_err(e: cometbft_p2p::Error) -> ConnError {
    match e {
        cometbft_p2p::Error::Io(io) => ConnError::Io(io),
        cometbft_p2p::Error::MessageSize { size } => ConnError::Decode(DecodeError::TooLarge(size)),
        cometbft_p2p::Error::Decode(d) => ConnError::Decode(DecodeError::Malformed(d.to_string())),
        other => ConnError::Secret(other.to_string()),
    }
}

/// An established privval connection.
pub(crate) enum Conn {
    Secret(Box<AsyncSecretConnection<TcpStream>>),
    Unix(BufReader<UnixStream>),
}

impl Conn {
    /// Dials the node and, for TCP, runs the SecretConnection handshake and checks the node id.
    pub(crate) async fn dial(addr: &PrivvalAddr) -> Result<Conn, ConnError> {
        let within = |f| tokio::time::timeout(CONNECT_TIMEOUT, f);
        match addr {
            PrivvalAddr::Unix(path) => {
                let s = within(UnixStream::connect(path))
                    .await
                    .map_err(|_| ConnError::Timeout)??;
                Ok(Conn::Unix(BufReader::new(s)))
            }
            PrivvalAddr::Tcp { node_id, host_port } => {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host_port))
                    .await
                    .map_err(|_| ConnError::Timeout)??;
                tcp.set_nodelay(true)?;
                // CometBFT does not authenticate its signer, so a fresh identity per connection
                // is enough; what matters is that keyguard authenticates the node.
                let identity = IdentitySecret::generate(&mut cometbft_p2p::rand_core::OsRng);
                let conn = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    AsyncSecretConnection::new(tcp, &identity),
                )
                .await
                .map_err(|_| ConnError::Timeout)?
                .map_err(secret_err)?;
                let actual = conn.peer_public_key().peer_id();
                if actual.verify(PeerId(*node_id)).is_err() {
                    return Err(ConnError::NodeId {
                        expected: hex::encode(node_id),
                        actual: actual.to_string(),
                    });
                }
                Ok(Conn::Secret(Box::new(conn)))
            }
        }
    }

    /// Reads and decodes one request. `Err(Decode(Invalid))` is answerable; other errors end
    /// the connection.
    pub(crate) async fn read(&mut self, version: WireVersion) -> Result<Request, ConnError> {
        match self {
            Conn::Secret(c) => {
                let msg = if version.reads_v1() {
                    WireMessage::V1(
                        c.read_msg::<v1::privval::Message>()
                            .await
                            .map_err(secret_err)?,
                    )
                } else {
                    WireMessage::Legacy(
                        c.read_msg::<v0_38::privval::Message>()
                            .await
                            .map_err(secret_err)?,
                    )
                };
                wire::decode(version, msg).map_err(ConnError::Decode)
            }
            Conn::Unix(s) => {
                // The uvarint length prefix: at most 10 bytes, the last without the high bit.
                let mut prefix = Vec::with_capacity(10);
                loop {
                    let b = s.read_u8().await?;
                    prefix.push(b);
                    if b & 0x80 == 0 {
                        break;
                    }
                    if prefix.len() == 10 {
                        return Err(ConnError::Decode(DecodeError::Malformed(
                            "length prefix too long".into(),
                        )));
                    }
                }
                let len = prost::decode_length_delimiter(prefix.as_slice())
                    .map_err(|e| ConnError::Decode(DecodeError::Malformed(e.to_string())))?;
                if len > MAX_MESSAGE_BYTES {
                    return Err(ConnError::Decode(DecodeError::TooLarge(len)));
                }
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await?;
                wire::decode_bytes(version, &body).map_err(ConnError::Decode)
            }
        }
    }

    /// Writes one response.
    pub(crate) async fn write(&mut self, msg: WireMessage) -> Result<(), ConnError> {
        match self {
            Conn::Secret(c) => match msg {
                WireMessage::Legacy(m) => c.write_msg(m).await,
                WireMessage::V1(m) => c.write_msg(m).await,
                WireMessage::Dual(m) => c.write_msg(m).await,
            }
            .map_err(secret_err),
            Conn::Unix(s) => {
                let body = msg.encode_to_vec();
                let mut buf = Vec::with_capacity(body.len() + 10);
                prost::encode_length_delimiter(body.len(), &mut buf)
                    .map_err(|e| ConnError::Secret(e.to_string()))?;
                buf.extend_from_slice(&body);
                let w = s.get_mut();
                w.write_all(&buf).await?;
                w.flush().await?;
                Ok(())
            }
        }
    }
}
