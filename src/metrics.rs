//! Every Prometheus metric keyguard exports, named in one place so dashboards and alerts have a
//! stable contract. Recording is cheap (atomic counters); rendering happens on scrape.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Signing requests by chain, method and decision (`signed`, `refused`, `failed`).
pub const REQUESTS: &str = "keyguard_requests_total";
/// Refusals by the rule that refused.
pub const REJECTIONS: &str = "keyguard_rejections_total";
/// Time spent in the key backend per signature, by backend.
pub const SIGN_SECONDS: &str = "keyguard_sign_duration_seconds";
/// Time from request decode to release (or refusal), by chain and method.
pub const REQUEST_SECONDS: &str = "keyguard_request_duration_seconds";
/// Keys loaded, by backend and scheme.
pub const KEYS: &str = "keyguard_keys";
/// Configuration reloads by outcome (`applied`, `rejected`).
pub const RELOADS: &str = "keyguard_config_reloads_total";
/// Last signed CometBFT height per chain and key (the double-sign watermark).
pub const COMETBFT_WATERMARK: &str = "keyguard_cometbft_watermark_height";
/// Last signet block height signed, per key (`docs/bitcoin-signet.md`).
pub const SIGNET_HEIGHT: &str = "keyguard_signet_height";
/// 1 once every listener accepts connections.
pub const READY: &str = "keyguard_ready";
/// PKCS#11 token events: `signature`, `high_s_normalized`, `relogin`, `reconnect`, `failure`.
pub const PKCS11_EVENTS: &str = "keyguard_pkcs11_events_total";
/// 1 while the PKCS#11 token answers, 0 while requests fail fast and recovery runs.
pub const PKCS11_AVAILABLE: &str = "keyguard_pkcs11_available";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Installs the process-wide recorder. Call once, before any metric is recorded.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The `chain` label for chains no configuration names.
pub const OTHER_CHAIN: &str = "other";

fn known_chains() -> &'static std::sync::RwLock<std::collections::HashSet<String>> {
    static KNOWN: std::sync::OnceLock<std::sync::RwLock<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// The chains a configuration names (`eip155:<id>` of listeners and EVM policies,
/// `bitcoin:<network>`, `cometbft:<chain id>` of validators): the only `chain` label values.
pub fn chain_labels(config: &crate::config::Config) -> Vec<String> {
    let mut labels = vec!["bitcoin".to_owned()];
    labels.extend(
        config
            .listeners
            .iter()
            .map(|l| format!("eip155:{}", l.chain_id)),
    );
    for p in &config.policies {
        if let Some(evm) = &p.evm {
            labels.extend(evm.chain_ids.iter().map(|c| format!("eip155:{c}")));
        }
        if let Some(btc) = &p.bitcoin {
            labels.push(format!("bitcoin:{}", btc.network));
        }
    }
    labels.extend(
        config
            .validators
            .iter()
            .map(|v| format!("cometbft:{}", v.chain_id)),
    );
    labels
}

/// Puts the chain labels of `config` in force (at start and on every reload).
pub fn set_chain_labels(config: &crate::config::Config) {
    let labels = chain_labels(config).into_iter().collect();
    *known_chains().write().unwrap_or_else(|e| e.into_inner()) = labels;
}

/// `chain` if a configuration names it, else [`OTHER_CHAIN`]: a caller choosing chain ids must
/// not create a permanent metric series per request (1,000 requests were 17,000 lines).
pub fn chain_label(chain: &str) -> String {
    let known = known_chains().read().unwrap_or_else(|e| e.into_inner());
    if known.contains(chain) {
        chain.to_owned()
    } else {
        OTHER_CHAIN.to_owned()
    }
}

/// Records the outcome of one signing request.
pub fn request(chain: &str, method: &'static str, decision: &'static str, elapsed: Duration) {
    let chain = chain_label(chain);
    metrics::counter!(REQUESTS, "chain" => chain.clone(), "method" => method, "decision" => decision)
        .increment(1);
    metrics::histogram!(REQUEST_SECONDS, "chain" => chain, "method" => method)
        .record(elapsed.as_secs_f64());
}

/// Records a refusal by rule.
pub fn rejection(rule: &str) {
    metrics::counter!(REJECTIONS, "rule" => rule.to_owned()).increment(1);
}

/// Records one backend signature.
pub fn sign(backend: &'static str, elapsed: Duration) {
    metrics::histogram!(SIGN_SECONDS, "backend" => backend).record(elapsed.as_secs_f64());
}

/// Counts a loaded key.
pub fn keys_loaded(backend: &'static str, scheme: keyguard_chain::Scheme) {
    metrics::gauge!(KEYS, "backend" => backend, "scheme" => scheme.to_string()).increment(1.0);
}

/// Counts a configuration reload by outcome.
pub fn reload(outcome: &'static str) {
    metrics::counter!(RELOADS, "outcome" => outcome).increment(1);
}

/// Records a committed CometBFT watermark height.
pub fn cometbft_watermark(chain_id: &str, key: &str, height: i64) {
    metrics::gauge!(COMETBFT_WATERMARK, "chain" => chain_id.to_owned(), "key" => key.to_owned())
        .set(height as f64);
}

/// Records a committed signet block height.
pub fn signet_height(key: &str, height: u32) {
    metrics::gauge!(SIGNET_HEIGHT, "key" => key.to_owned()).set(f64::from(height));
}

/// Signing requests waiting for approvals.
pub const APPROVALS_PENDING: &str = "keyguard_approvals_pending";
/// Keys taken offline by the kill switch (`scope="all"` is 1 while everything is off).
pub const KEYS_DISABLED: &str = "keyguard_keys_disabled";

/// Sets the pending-approvals gauge.
pub fn approvals_pending(count: usize) {
    metrics::gauge!(APPROVALS_PENDING).set(count as f64);
}

/// Sets the kill-switch gauges.
pub fn keys_disabled(all: bool, individually: usize) {
    metrics::gauge!(KEYS_DISABLED, "scope" => "all").set(f64::from(u8::from(all)));
    metrics::gauge!(KEYS_DISABLED, "scope" => "key").set(individually as f64);
}

/// Counts a PKCS#11 token event (see [`PKCS11_EVENTS`]).
pub fn pkcs11_event(event: &'static str) {
    metrics::counter!(PKCS11_EVENTS, "event" => event).increment(1);
}

/// Sets whether the PKCS#11 token is usable.
pub fn pkcs11_available(up: bool) {
    metrics::gauge!(PKCS11_AVAILABLE).set(f64::from(u8::from(up)));
}

/// Cloud key service calls by backend and operation (`sign`, `get_public_key`), per attempt.
pub const CLOUD_CALL_SECONDS: &str = "keyguard_cloud_call_duration_seconds";
/// Cloud backend events: `signature`, `high_s_normalized`, `throttled`, `retry`,
/// `throttled_out`, `timeout`, `failure`, `rejected`, `rate_limited`, `breaker_opened`,
/// `breaker_closed`, `breaker_refused`, `bad_signature`.
pub const CLOUD_EVENTS: &str = "keyguard_cloud_events_total";
/// 1 while a cloud backend's circuit is closed, 0 while requests fail fast.
pub const CLOUD_AVAILABLE: &str = "keyguard_cloud_available";

/// Records one cloud call attempt's latency.
pub fn cloud_call(backend: &'static str, op: &'static str, elapsed: Duration) {
    metrics::histogram!(CLOUD_CALL_SECONDS, "backend" => backend, "op" => op)
        .record(elapsed.as_secs_f64());
}

/// Counts a cloud backend event (see [`CLOUD_EVENTS`]).
pub fn cloud_event(backend: &'static str, event: &'static str) {
    metrics::counter!(CLOUD_EVENTS, "backend" => backend, "event" => event).increment(1);
}

/// Sets whether a cloud backend's circuit is closed.
pub fn cloud_available(backend: &'static str, up: bool) {
    metrics::gauge!(CLOUD_AVAILABLE, "backend" => backend).set(f64::from(u8::from(up)));
}
