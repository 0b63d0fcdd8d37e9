//! `keyguard bench soak`: a long run at a fixed offered rate, to show that throughput stays
//! steady, memory stays flat and nothing fails but what policy is meant to refuse. A signer
//! that leaks a little per request, or slows down as its audit log grows, passes a 10-second
//! benchmark and fails here.
//!
//! The load is `eth_signTransaction` over HTTP from `--connections` clients, paced to `--rate`
//! in total (or to `--fraction` of a closed-loop peak measured first). Every `--interval` the
//! answered requests and the daemon's VmRSS (`/proc/<pid>/status`) are sampled. It fails when
//! an interval falls below `--min-interval-ratio` of the target, when RSS grows by more than
//! `--max-rss-growth-mib` from the first sample to the last, or on any error other than the
//! intended policy refusals (`--refuse-every N` makes every Nth request one: a chain id no
//! policy allows).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonrpsee::core::client::{ClientT, Error as ClientError};
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::http_client::HttpClientBuilder;
use serde_json::{json, Value};

/// A chain id no deployment signs for: the intended refusals of `--refuse-every`.
const REFUSED_CHAIN_ID: &str = "0xdeadbeef";

/// Options of `keyguard bench soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// JSON-RPC endpoint to load.
    #[arg(long, default_value = "http://127.0.0.1:8550")]
    url: String,
    /// Minutes of paced load.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Offered requests per second in total; without it, `--fraction` of a measured peak.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of the closed-loop peak to offer when `--rate` is not given.
    #[arg(long, default_value_t = 0.8)]
    fraction: f64,
    /// Seconds of the closed-loop peak measurement.
    #[arg(long, default_value_t = 15)]
    peak_seconds: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds per throughput and RSS sample.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// The daemon's process id, for VmRSS (no memory check without it).
    #[arg(long)]
    pid: Option<u32>,
    /// Fail if an interval answers fewer than this share of the target rate.
    #[arg(long, default_value_t = 0.9)]
    min_interval_ratio: f64,
    /// Fail if VmRSS grows by more than this from the first sample to the last.
    #[arg(long, default_value_t = 8)]
    max_rss_growth_mib: u64,
    /// Make every Nth request an intended policy refusal (0: none).
    #[arg(long, default_value_t = 0)]
    refuse_every: u64,
    /// Destination of the signed transactions.
    #[arg(long, default_value = "0x000000000000000000000000000000000000dEaD")]
    to: String,
}

/// Counters the clients share with the sampler.
#[derive(Default)]
struct Tally {
    signed: AtomicU64,
    refused: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latencies_us: Mutex<Vec<u32>>,
}

impl Tally {
    fn answered(&self) -> u64 {
        self.signed.load(Ordering::Relaxed) + self.refused.load(Ordering::Relaxed)
    }

    fn error(&self, kind: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// The daemon's resident memory in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// The daemon's CPU time (user + system) in clock ticks, from /proc/<pid>/stat; `None` if
/// unreadable. With the machine's load average next to it, an interval that falls short can be
/// told apart: the daemon busy but slower (its own problem), or starved by other processes.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn run(args: SoakArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(soak(args))
}

async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let probe = HttpClientBuilder::default().build(&args.url)?;
    let accounts: Value = probe
        .request("eth_accounts", ArrayParams::new())
        .await
        .with_context(|| format!("eth_accounts on {}", args.url))?;
    let from = accounts
        .get(0)
        .and_then(Value::as_str)
        .with_context(|| format!("{} has no accounts", args.url))?
        .to_owned();
    let chain_id: Value = probe.request("eth_chainId", ArrayParams::new()).await?;
    let nonce = Arc::new(AtomicU64::new(0));
    let load = Load {
        url: args.url.clone(),
        from,
        chain_id,
        to: args.to.clone(),
        refuse_every: args.refuse_every,
        nonce,
    };

    let rate = match args.rate {
        Some(r) => r,
        None => {
            let tally = Arc::new(Tally::default());
            let secs = Duration::from_secs(args.peak_seconds);
            load.run(args.connections, None, secs, tally.clone())
                .await?;
            let peak = tally.answered() as f64 / secs.as_secs_f64();
            println!("soak: closed-loop peak {peak:.0} req/s over {secs:?}");
            peak * args.fraction
        }
    };
    anyhow::ensure!(rate > 0.0, "no target rate");
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    println!(
        "soak: machine {cores} cores; target {rate:.0} req/s for {:.1} min over {} connections, \
         {} s intervals",
        args.minutes, args.connections, args.interval
    );

    let tally = Arc::new(Tally::default());
    let rss_start = args.pid.map(rss_kib).transpose()?;
    let clients = {
        let (load, tally) = (load.clone(), tally.clone());
        let connections = args.connections;
        tokio::spawn(async move { load.run(connections, Some(rate), total, tally).await })
    };
    let mut intervals = Vec::new();
    let mut rss = Vec::new();
    let started = Instant::now();
    let mut last = (0u64, started);
    let mut last_cpu = args.pid.and_then(cpu_ticks);
    let step = Duration::from_secs(args.interval.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    while started.elapsed() + step / 2 < total {
        ticker.tick().await;
        let (n, now) = (tally.answered(), Instant::now());
        let per_s = (n - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        last = (n, now);
        let mem = args.pid.map(rss_kib).transpose()?;
        if let Some(m) = mem {
            rss.push(m);
        }
        let errors: u64 = tally
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        // /proc clock ticks are USER_HZ, 100 per second on Linux.
        let cpu = args.pid.and_then(cpu_ticks);
        let cpu_pct = match (last_cpu, cpu) {
            (Some(a), Some(b)) => format!("{:.0}%", (b - a) as f64 / step.as_secs_f64()),
            _ => "-".into(),
        };
        last_cpu = cpu;
        println!(
            "soak: {:>5.0}s {per_s:>7.0} req/s  rss {}  daemon cpu {cpu_pct}  load {}  errors {errors}",
            started.elapsed().as_secs_f64(),
            mem.map_or("-".into(), |m| format!("{m} KiB")),
            load_average(),
        );
        intervals.push(per_s);
    }
    clients.await??;
    let rss_end = args.pid.map(rss_kib).transpose()?;
    report(
        &args,
        rate,
        &tally,
        &intervals,
        rss_start,
        rss.first().copied(),
        rss_end,
    )
}

/// Prints the summary and turns every broken promise into an error.
fn report(
    args: &SoakArgs,
    rate: f64,
    tally: &Tally,
    intervals: &[f64],
    rss_before: Option<u64>,
    rss_first: Option<u64>,
    rss_end: Option<u64>,
) -> anyhow::Result<()> {
    let mut lat =
        std::mem::take(&mut *tally.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(f64::NAN, |us| f64::from(*us) / 1000.0)
    };
    let min = intervals.iter().copied().fold(f64::INFINITY, f64::min);
    let max = intervals.iter().copied().fold(0.0, f64::max);
    let mean = intervals.iter().sum::<f64>() / intervals.len().max(1) as f64;
    let errors = tally
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    println!(
        "soak summary: target {rate:.0} req/s; intervals min {min:.0} / mean {mean:.0} / max \
         {max:.0} req/s; {} signed, {} refused by policy (intended); latency p50 {:.2} ms, \
         p99 {:.2} ms",
        tally.signed.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
    );
    if let (Some(before), Some(first), Some(end)) = (rss_before, rss_first, rss_end) {
        println!("soak summary: RSS before {before} KiB, first sample {first} KiB, end {end} KiB");
    }
    println!("soak summary: errors by kind: {errors:?}");

    let mut broken = Vec::new();
    if intervals.is_empty() {
        broken.push("no interval completed".to_owned());
    }
    let floor = rate * args.min_interval_ratio;
    for (i, r) in intervals.iter().enumerate() {
        if *r < floor {
            broken.push(format!("interval {i}: {r:.0} req/s is below {floor:.0}"));
        }
    }
    if let (Some(first), Some(end)) = (rss_first, rss_end) {
        let growth = end.saturating_sub(first);
        if growth > args.max_rss_growth_mib * 1024 {
            broken.push(format!("RSS grew by {growth} KiB ({first} -> {end})"));
        }
    }
    if !errors.is_empty() {
        broken.push(format!("unintended errors: {errors:?}"));
    }
    anyhow::ensure!(broken.is_empty(), "soak failed: {}", broken.join("; "));
    println!("soak: OK");
    Ok(())
}

/// What every client sends.
#[derive(Clone)]
struct Load {
    url: String,
    from: String,
    chain_id: Value,
    to: String,
    refuse_every: u64,
    nonce: Arc<AtomicU64>,
}

impl Load {
    /// `connections` clients for `duration`, paced to `rate` in total when given.
    async fn run(
        &self,
        connections: usize,
        rate: Option<f64>,
        duration: Duration,
        tally: Arc<Tally>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        let period = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
        let mut tasks = Vec::new();
        for c in 0..connections {
            let client = HttpClientBuilder::default()
                .request_timeout(Duration::from_secs(30))
                .build(&self.url)?;
            let (load, tally) = (self.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                // Staggered starts, so paced clients do not fire in lockstep.
                let mut ticker = period.map(|p| {
                    let offset = p.mul_f64(c as f64 / connections as f64);
                    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
                    // A slow answer must not lower the offered rate (that would hide the very
                    // slowdown a soak looks for): missed sends go out at once to catch up.
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    t
                });
                while Instant::now() < deadline {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    load.one(&client, &tally).await;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    }

    async fn one(&self, client: &jsonrpsee::http_client::HttpClient, tally: &Tally) {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        let intended_refusal = self.refuse_every > 0 && n.is_multiple_of(self.refuse_every);
        let chain_id = if intended_refusal {
            Value::String(REFUSED_CHAIN_ID.into())
        } else {
            self.chain_id.clone()
        };
        let tx = json!({
            "from": self.from,
            "to": self.to,
            "gas": "0x5208",
            "maxFeePerGas": "0x3b9aca00",
            "maxPriorityFeePerGas": "0x1",
            "value": "0x1",
            "nonce": format!("{n:#x}"),
            "chainId": chain_id,
        });
        let mut params = ArrayParams::new();
        params.insert(tx).expect("serializable");
        let sent = Instant::now();
        let outcome = client
            .request::<Value, _>("eth_signTransaction", params)
            .await;
        let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match outcome {
            Ok(_) if !intended_refusal => {
                tally.signed.fetch_add(1, Ordering::Relaxed);
                tally
                    .latencies_us
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(us);
            }
            Ok(_) => tally.error("signed an intended refusal".into()),
            Err(ClientError::Call(e)) if intended_refusal && e.code() == -32001 => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(ClientError::Call(e)) => {
                let rule = e
                    .data()
                    .and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
                    .and_then(|d| d["rule"].as_str().map(str::to_owned));
                tally.error(match rule {
                    Some(rule) => format!("rpc {} {rule}", e.code()),
                    None => format!("rpc {}", e.code()),
                });
            }
            Err(ClientError::RequestTimeout) => tally.error("timeout".into()),
            Err(ClientError::Transport(_)) => tally.error("transport".into()),
            Err(e) => tally.error(format!("client: {e}")),
        }
    }
}
