//! Adversarial suites: for each protocol a table of hostile requests, each row with the error it
//! must get, checked to have signed nothing and to have left an audit row; and the data
//! directory filling up or turning read-only under a running daemon.
//!
//! - `evm`: Ethereum JSON-RPC (bearer listener); `evm_policy`: rule semantics on every shape.
//! - `evm_movement`: token movement in calldata and typed data, approvals adding up.
//! - `privval`: CometBFT remote signer (mock validator node over a Unix socket).
//! - `bitcoin`: `btc_signPsbt`.
//! - `admin`: the admin API on its Unix socket.
//! - `audit_growth`: refusals carrying attacker-sized data, a fixed count each: bounded growth.
//! - `disk`: a tmpfs data directory filled to the last byte, then remounted read-only.
//! - `faults`: the CometBFT durability promises across a SIGKILL, each with the injected fault
//!   (`KEYGUARD_FAULT`) that must make its check fail.

#![allow(unreachable_pub)]

mod admin;
mod audit_growth;
mod bitcoin;
mod bitcoin_freeze;
#[path = "../support/bitcoin_verify.rs"]
mod bitcoin_verify;
#[path = "../common/mod.rs"]
mod common;
#[path = "../control/mod.rs"]
mod control;
mod disk;
mod evm;
mod evm_movement;
mod evm_policy;
mod evm_table;
mod faults;
#[allow(dead_code)]
#[path = "../privval/harness.rs"]
mod harness;
mod helpers;
#[path = "../mockval/mod.rs"]
mod mockval;
mod privval;
mod privval_state;

use mockval::node;
