//! keyguard: a signing firewall between applications and their keys.
//!
//! Layout (one module per pipeline stage, see `docs/design.md`):
//! - [`server`]: transports; the EVM JSON-RPC listener turns HTTP/WebSocket calls into guard calls.
//! - [`access`]: who is calling (bearer tokens, clients managed through the admin API) and what
//!   they were granted (keys, chains, methods, rate limit); users, roles, TOTP, kill switch.
//! - [`guard`]: the pipeline itself: authorize, decode, policy, sign, verify, audit, in order.
//! - [`policy`]: durable velocity counters and nonce ownership, reserved before signing.
//! - [`backend`]: key backends behind one trait (encrypted software keystore today).
//! - [`sealing`]: the keystore passphrase, its KDF and AEAD sealing (key files, TOTP secrets).
//! - [`store`]: SQLite: migrations and the hash-chained audit log with group commit.
//! - [`config`]: the TOML model, validated before anything starts.
//! - [`outbound`]: clients to nodes (upstream Ethereum node, Bitcoin Core), used by guard and
//!   server.
//! - [`cli`]: the `keyguard` command.
//!
//! A signing request: transport -> authenticate -> rate limits -> kill-switch pass -> decode
//! (chain crate) -> policy -> approvals -> sign (backend) -> pass 2 (chain crate re-decodes and
//! recovers) -> audit commit -> response; the order is owned by `guard::pipeline`.
//!
//! Modules form layers (config and other leaves <- outbound, metrics <- store <- access <-
//! policy, approvals, backend <- guard <- server <- cli); a module uses only lower layers
//! (`docs/design.md` "Module layers", enforced by `tests/module_graph.rs`).

pub mod access;
pub mod approvals;
pub mod backend;
pub mod cli;
pub mod config;
pub mod decode_gate;
pub mod fuzz_harness;
pub mod fuzz_shapes;
pub mod guard;
pub mod hardening;
pub mod log_escape;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod sealing;
pub mod server;
pub mod store;
