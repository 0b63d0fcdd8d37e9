//! The CometBFT remote-signer transport: keyguard dials each configured validator node
//! (`priv_validator_laddr`), answers its requests one at a time, and redials with backoff when
//! the connection drops.
//!
//! Refusals go back as `RemoteSignerError { code, description }`, with these codes:
//! 1 policy (double-sign, regression, block-field rules; the description starts with the rule),
//! 2 invalid request, 3 not allowed (SignBytes, key disabled by the kill switch), 4 backend or
//! store failure.

mod conn;

use std::sync::Arc;
use std::time::Duration;

use keyguard_chain::Rejection;
use keyguard_cometbft::wire::{
    encode, DecodeError, RemoteError, Request, RequestKind, Response, SignedProposal, SignedVote,
};
use keyguard_cometbft::{SignRequest, WireVersion};
use tokio::task::JoinHandle;

use conn::Conn;
pub use conn::ConnError;

use crate::config::PrivvalAddr;
use crate::guard::{CometbftTarget, Guard, GuardError};

/// A node that sends nothing for this long (it pings every few seconds) is redialed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// First pause before redialing.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// Error code: a policy rule refused.
pub const CODE_POLICY: i32 = 1;
/// Error code: the request is malformed.
pub const CODE_INVALID: i32 = 2;
/// Error code: not allowed at all (SignBytes; a key not granted).
pub const CODE_NOT_ALLOWED: i32 = 3;
/// Error code: backend, pass 2 or store failure (nothing was released).
pub const CODE_BACKEND: i32 = 4;

/// Everything one validator connection needs.
#[derive(Clone, Debug)]
pub struct PrivvalClient {
    /// What it signs for.
    pub target: CometbftTarget,
    /// Where the node listens.
    pub addr: PrivvalAddr,
    /// Wire version.
    pub version: WireVersion,
    /// Longest pause between redials.
    pub retry_max: Duration,
}

/// Starts dialing; the task runs until aborted.
pub fn start(guard: Arc<Guard>, client: PrivvalClient) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = RETRY_MIN;
        loop {
            match Conn::dial(&client.addr).await {
                Ok(conn) => {
                    pause = RETRY_MIN;
                    tracing::info!(validator = %client.target.name, "privval connected");
                    if let Err(e) = serve(&guard, &client, conn).await {
                        tracing::warn!(validator = %client.target.name, error = %e, "privval connection ended");
                    }
                }
                Err(e) => {
                    tracing::debug!(validator = %client.target.name, error = %e, "privval dial failed");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(client.retry_max.max(RETRY_MIN));
        }
    })
}

async fn serve(guard: &Guard, client: &PrivvalClient, mut conn: Conn) -> Result<(), ConnError> {
    loop {
        let read = tokio::time::timeout(IDLE_TIMEOUT, conn.read(client.version))
            .await
            .map_err(|_| ConnError::Timeout)?;
        let response = match read {
            Ok(request) => handle(guard, &client.target, request).await,
            Err(ConnError::Decode(DecodeError::Invalid { kind, rejection })) => {
                let refusal = GuardError::Rejected(rejection);
                guard
                    .audit_cometbft_refusal(&client.target, method_of(kind), &refusal)
                    .await;
                Response::error(kind, remote_error(&refusal))
            }
            Err(e) => return Err(e),
        };
        conn.write(encode(client.version, &response)).await?;
    }
}

fn method_of(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::PubKey => "privval.PubKey",
        RequestKind::SignVote => "privval.SignVote",
        RequestKind::SignProposal => "privval.SignProposal",
        RequestKind::SignBytes => "privval.SignBytes",
        RequestKind::Ping => "privval.Ping",
    }
}

/// The protocol form of a guard refusal.
pub fn remote_error(e: &GuardError) -> RemoteError {
    let code = match e {
        GuardError::Rejected(Rejection::Policy { .. }) => CODE_POLICY,
        GuardError::Rejected(Rejection::InvalidParams { .. }) => CODE_INVALID,
        GuardError::Unauthorized(_)
        | GuardError::OutOfScope { .. }
        | GuardError::KeyDisabled(_) => CODE_NOT_ALLOWED,
        // The store cannot take more work: the node sees a signer failure, as with a full disk.
        GuardError::RateLimited {
            rule: "audit.disk_floor",
            ..
        } => CODE_BACKEND,
        // Consensus messages cannot wait for human approval; a rate limit refuses too.
        GuardError::ApprovalRequired { .. } | GuardError::RateLimited { .. } => CODE_POLICY,
        GuardError::Backend(_) | GuardError::Pass2Mismatch(_) => CODE_BACKEND,
    };
    let description = match e {
        GuardError::Rejected(Rejection::Policy { rule, reason, .. }) => {
            format!("keyguard: {rule}: {reason}")
        }
        other => format!("keyguard: {other}"),
    };
    RemoteError { code, description }
}

async fn handle(guard: &Guard, target: &CometbftTarget, request: Request) -> Response {
    match request {
        Request::Ping => Response::Ping,
        Request::PubKey { chain_id } => Response::PubKey(
            guard
                .cometbft_public_key(target, &chain_id)
                .map_err(|e| remote_error(&e)),
        ),
        Request::SignVote {
            chain_id,
            vote,
            sign_extension,
        } => {
            let signed = guard
                .sign_cometbft(target, &chain_id, SignRequest::Vote(vote), sign_extension)
                .await;
            Response::SignedVote(match signed {
                Ok(s) => match s.request {
                    SignRequest::Vote(vote) => Ok(SignedVote {
                        vote,
                        signature: s.signature,
                        extension_signature: s.extension_signature,
                    }),
                    SignRequest::Proposal(_) => Err(internal()),
                },
                Err(e) => Err(remote_error(&e)),
            })
        }
        Request::SignProposal { chain_id, proposal } => {
            let signed = guard
                .sign_cometbft(target, &chain_id, SignRequest::Proposal(proposal), false)
                .await;
            Response::SignedProposal(match signed {
                Ok(s) => match s.request {
                    SignRequest::Proposal(proposal) => Ok(SignedProposal {
                        proposal,
                        signature: s.signature,
                    }),
                    SignRequest::Vote(_) => Err(internal()),
                },
                Err(e) => Err(remote_error(&e)),
            })
        }
        Request::SignBytes { len } => {
            // keyguard signs only what it has parsed and canonicalized itself; arbitrary bytes
            // under the consensus key could be a vote or proposal in disguise.
            let refusal = GuardError::Rejected(Rejection::policy(
                "cometbft.sign_bytes",
                "value",
                format!("refusing to sign {len} opaque bytes with a consensus key"),
            ));
            guard
                .audit_cometbft_refusal(target, "privval.SignBytes", &refusal)
                .await;
            Response::SignBytes(RemoteError {
                code: CODE_NOT_ALLOWED,
                description: remote_error(&refusal).description,
            })
        }
    }
}

fn internal() -> RemoteError {
    RemoteError {
        code: CODE_BACKEND,
        description: "keyguard: internal error".into(),
    }
}
