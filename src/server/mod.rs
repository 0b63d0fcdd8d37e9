//! Transports. Each turns its protocol's requests into guard calls and the guard's refusals
//! into the protocol's own error form; none of them makes a policy decision.

pub mod admin;
mod bitcoin;
mod connections;
mod edge_io;
pub mod eth2;
mod eth2_keymanager;
pub mod evm;
mod evm_methods;
mod http_edge;
pub mod metrics_http;
pub mod privval;
pub mod rpc_error;
pub mod tls;
pub mod unauth;
mod ws_frames;
