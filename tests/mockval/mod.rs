//! A mock CometBFT validator node, shared by the privval tests and the cross-protocol crash
//! harness: `conn` accepts keyguard's dial (Unix socket or SecretConnection), `node` builds
//! requests with the protocol crates' own types and verifies every signature it gets.
#![allow(dead_code, unreachable_pub)]

pub mod conn;
pub mod node;
