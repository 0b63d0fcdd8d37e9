//! Adversarial suites: for each protocol a table of hostile requests, each row with the error it
//! must get, checked to have signed nothing and to have left an audit row; and the data
//! directory filling up or turning read-only under a running daemon.
//!
//! - `evm`: Ethereum JSON-RPC (bearer listener).
//! - `privval`: CometBFT remote signer (mock validator node over a Unix socket).
//! - `bitcoin`: `btc_signPsbt`.
//! - `admin`: the admin API on its Unix socket.
//! - `audit_growth`: refusals carrying attacker-sized data, a fixed count each: bounded growth.
//! - `disk`: a tmpfs data directory filled to the last byte, then remounted read-only.

#![allow(unreachable_pub)]

mod admin;
mod audit_growth;
mod bitcoin;
#[path = "../common/mod.rs"]
mod common;
#[path = "../control/mod.rs"]
mod control;
mod disk;
mod evm;
mod evm_table;
#[allow(dead_code)]
#[path = "../privval/harness.rs"]
mod harness;
mod helpers;
#[path = "../mockval/mod.rs"]
mod mockval;
mod privval;

use mockval::node;
