//! `keyguard bench`: drives `eth_signTransaction` over HTTP with N concurrent connections and
//! reports throughput and latency percentiles, next to the raw k256 ceiling (sign + recover per
//! transaction on all cores). The same load can be pointed at any signer, anvil included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use serde_json::{json, Value};

/// Options of `keyguard bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// JSON-RPC endpoint to load; repeat to measure several signers in one run.
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// After the closed-loop run, pace a second run at half the measured throughput.
    #[arg(long)]
    half_load: bool,
    /// Destination of the signed transactions.
    #[arg(long, default_value = "0x000000000000000000000000000000000000dEaD")]
    to: String,
    /// Calldata of the signed transactions (e.g. an ERC-20 transfer, to load the rule engine).
    #[arg(long, default_value = "0x")]
    input: String,
    /// Native value of the signed transactions, as a hex quantity.
    #[arg(long, default_value = "0x1")]
    value: String,
    /// First nonce of the run (two runs against instances sharing one key and store give
    /// each its own range).
    #[arg(long, default_value_t = 0)]
    first_nonce: u64,
    /// Seconds for the raw k256 ceiling (0 skips it).
    #[arg(long, default_value_t = 5)]
    ceiling: u64,
    /// Also measure raw `C_Sign` on this config's PKCS#11 token (before any URL load), with
    /// the config's `sessions` threads, for `--duration` seconds.
    #[arg(long)]
    pkcs11_config: Option<std::path::PathBuf>,
    /// The token key the raw measurement signs with.
    #[arg(long, requires = "pkcs11_config")]
    pkcs11_key: Option<String>,
    /// Also measure raw AWS KMS `Sign` (the SDK, `--connections` in flight, `--duration`
    /// seconds) with this config's `[keystore.aws_kms]`, beside keyguard's own rate.
    #[arg(long)]
    aws_kms_config: Option<std::path::PathBuf>,
    /// The KMS key (keyguard key id) the raw measurement signs with.
    #[arg(long, requires = "aws_kms_config")]
    aws_kms_key: Option<String>,
    /// Another kind of run instead of the throughput table.
    #[command(subcommand)]
    mode: Option<BenchMode>,
}

/// Runs of `keyguard bench` other than the throughput table.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchMode {
    /// Minutes of paced load: throughput steady, memory flat, no error but intended refusals.
    Soak(super::soak::SoakArgs),
}

struct Measurement {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

impl Measurement {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }

    fn report(&self, label: &str) {
        println!(
            "{label}: {:.0} tx/s ({} ok, {} errors in {:.1}s), latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
            self.throughput(),
            self.requests,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
        );
        if let Some(e) = &self.first_error {
            println!("  first error: {e}");
        }
    }
}

pub(crate) fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchMode::Soak(soak)) = args.mode.take() {
        return super::soak::run(soak);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {cores} cores; {} connections, {} s per run",
        args.connections, args.duration
    );
    if args.ceiling > 0 {
        let secs = Duration::from_secs(args.ceiling);
        let rate = ceiling(cores, secs, Recovery::K256);
        println!("ceiling (k256 sign + k256 recover, {cores} threads): {rate:.0} tx/s");
        let rate = ceiling(cores, secs, Recovery::Libsecp256k1);
        println!(
            "keyguard's own crypto path (k256 sign + libsecp256k1 recover, {cores} threads): {rate:.0} tx/s"
        );
    }
    if let Some(config) = &args.pkcs11_config {
        raw_pkcs11(config, args.pkcs11_key.as_deref(), args.duration)?;
    }
    // One thread for the load generator, so it takes the same share of the machine for every
    // signer it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Some(config) = &args.aws_kms_config {
        runtime.block_on(raw_aws_kms(
            config,
            args.aws_kms_key.as_deref(),
            args.connections,
            args.duration,
        ))?;
    }
    for url in &args.urls {
        runtime.block_on(async {
            let peak = load(url, &args, None).await?;
            peak.report(&format!("{url} peak"));
            if args.half_load && peak.throughput() > 0.0 {
                let half = load(url, &args, Some(peak.throughput() / 2.0)).await?;
                half.report(&format!(
                    "{url} at 50% ({:.0} tx/s offered)",
                    peak.throughput() / 2.0
                ));
            }
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

#[cfg(feature = "pkcs11")]
fn raw_pkcs11(config: &std::path::Path, key: Option<&str>, secs: u64) -> anyhow::Result<()> {
    use crate::backend::pkcs11::{raw_sign_latencies, settings_from_config};
    let config = crate::config::Config::load(config)?;
    let p = config
        .keystore
        .pkcs11
        .as_ref()
        .context("--pkcs11-config needs a [keystore.pkcs11] table")?;
    let key = keyguard_chain::KeyId::new(key.context("--pkcs11-key is required")?)?;
    let settings = settings_from_config(p)?;
    let elapsed = Instant::now();
    let mut latencies_us = raw_sign_latencies(
        &settings,
        &key,
        p.sessions as usize,
        Duration::from_secs(secs),
    )?;
    latencies_us.sort_unstable();
    Measurement {
        requests: latencies_us.len(),
        errors: 0,
        elapsed: elapsed.elapsed(),
        latencies_us,
        first_error: None,
    }
    .report(&format!("raw C_Sign ({} sessions)", p.sessions));
    Ok(())
}

#[cfg(not(feature = "pkcs11"))]
fn raw_pkcs11(_config: &std::path::Path, _key: Option<&str>, _secs: u64) -> anyhow::Result<()> {
    anyhow::bail!("this keyguard was built without the `pkcs11` feature")
}

#[cfg(feature = "aws-kms")]
async fn raw_aws_kms(
    config: &std::path::Path,
    key: Option<&str>,
    connections: usize,
    secs: u64,
) -> anyhow::Result<()> {
    use crate::backend::cloud::aws_kms::AwsKmsBackend;
    let config = crate::config::Config::load(config)?;
    let aws = config
        .keystore
        .aws_kms
        .as_ref()
        .context("--aws-kms-config needs a [keystore.aws_kms] table")?;
    let key = keyguard_chain::KeyId::new(key.context("--aws-kms-key is required")?)?;
    let backend = Arc::new(AwsKmsBackend::open(aws).await?);
    let start = Instant::now();
    let duration = Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..connections.max(1) {
        let (backend, key) = (backend.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while start.elapsed() < duration {
                let digest =
                    alloy_primitives::keccak256((t as u64 * 1_000_000_000 + n).to_be_bytes());
                let sent = Instant::now();
                backend
                    .raw_sign(&key, digest.0)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                n += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await??);
    }
    latencies_us.sort_unstable();
    Measurement {
        requests: latencies_us.len(),
        errors: 0,
        elapsed: start.elapsed(),
        latencies_us,
        first_error: None,
    }
    .report(&format!("raw AWS KMS Sign ({connections} in flight)"));
    Ok(())
}

#[cfg(not(feature = "aws-kms"))]
async fn raw_aws_kms(
    _config: &std::path::Path,
    _key: Option<&str>,
    _connections: usize,
    _secs: u64,
) -> anyhow::Result<()> {
    anyhow::bail!("this keyguard was built without the `aws-kms` feature")
}

#[derive(Clone, Copy)]
enum Recovery {
    K256,
    Libsecp256k1,
}

fn ceiling(threads: usize, duration: Duration, recovery: Recovery) -> f64 {
    use k256::ecdsa::{SigningKey, VerifyingKey};
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let total = total.clone();
            s.spawn(move || {
                let key = SigningKey::random(&mut rand::rngs::OsRng);
                let mut n = 0u64;
                while start.elapsed() < duration {
                    let digest =
                        alloy_primitives::keccak256((t as u64 * 1_000_000_000 + n).to_be_bytes());
                    let (sig, recid) = key
                        .sign_prehash_recoverable(digest.as_slice())
                        .expect("sign");
                    match recovery {
                        Recovery::K256 => {
                            let pk =
                                VerifyingKey::recover_from_prehash(digest.as_slice(), &sig, recid)
                                    .expect("recover");
                            assert_eq!(&pk, key.verifying_key());
                        }
                        Recovery::Libsecp256k1 => {
                            let sig = alloy_primitives::Signature::from_signature_and_parity(
                                sig,
                                recid.is_y_odd(),
                            );
                            alloy_consensus::crypto::secp256k1::recover_signer(&sig, digest)
                                .expect("recover");
                        }
                    }
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn call(client: &HttpClient, method: &str, params: ArrayParams) -> anyhow::Result<Value> {
    Ok(client.request::<Value, _>(method, params).await?)
}

async fn load(url: &str, args: &BenchArgs, rate: Option<f64>) -> anyhow::Result<Measurement> {
    let probe = HttpClientBuilder::default().build(url)?;
    let accounts = call(&probe, "eth_accounts", ArrayParams::new())
        .await
        .with_context(|| format!("eth_accounts on {url}"))?;
    let from = accounts
        .get(0)
        .and_then(Value::as_str)
        .with_context(|| format!("{url} has no accounts"))?
        .to_string();
    let chain_id = call(&probe, "eth_chainId", ArrayParams::new()).await?;
    let nonce = Arc::new(AtomicU64::new(args.first_nonce));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let per_connection_interval =
        rate.map(|r| Duration::from_secs_f64(args.connections as f64 / r));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let client = HttpClientBuilder::default()
            .request_timeout(Duration::from_secs(30))
            .build(url)?;
        let (from, chain_id, nonce) = (from.clone(), chain_id.clone(), nonce.clone());
        let (to, input, value) = (args.to.clone(), args.input.clone(), args.value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            let mut ticker = per_connection_interval.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let n = nonce.fetch_add(1, Ordering::Relaxed);
                let tx = json!({
                    "from": from,
                    "to": to,
                    "input": input,
                    "gas": "0x186a0",
                    "maxFeePerGas": "0x3b9aca00",
                    "maxPriorityFeePerGas": "0x1",
                    "value": value,
                    "nonce": format!("{n:#x}"),
                    "chainId": chain_id,
                });
                let mut params = ArrayParams::new();
                params.insert(tx).expect("serializable");
                let sent = Instant::now();
                match call(&client, "eth_signTransaction", params).await {
                    Ok(_) => {
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut m = Measurement {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        first_error: None,
    };
    for t in tasks {
        let (lat, errors, first_error) = t.await?;
        m.latencies_us.extend(lat);
        m.errors += errors;
        m.first_error = m.first_error.or(first_error);
    }
    m.elapsed = start.elapsed();
    m.requests = m.latencies_us.len();
    m.latencies_us.sort_unstable();
    Ok(m)
}
