//! `keyguard start`: harden the process, load config and keys, open the store, bind listeners,
//! tell systemd we are ready, serve until told to stop. Startup lines on stdout are a stable
//! interface (tests and scripts read them).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyguard_chain::{KeyId, Scheme};
use sd_notify::NotifyState;

use super::keys::{describe, open_keystore, open_pkcs11};
use super::reload::Reloader;
use crate::access::clients::ClientBook;
use crate::access::kill::KillSwitch;
use crate::access::totp_vault::TotpVault;
use crate::approvals::Approvals;
use crate::backend::KeyBackend;
use crate::config::{BackendKind, Config, Protocol};
use crate::guard::{CometbftTarget, Guard};
use crate::server;
use crate::server::admin::{AdminContext, ReloadRequest};
use crate::server::metrics_http::Readiness;
use crate::server::privval::PrivvalClient;
use crate::store::Store;
use crate::{hardening, metrics};

pub(crate) fn run(config_path: &Path) -> anyhow::Result<()> {
    // Before any key is in memory.
    hardening::forbid_core_dumps()?;
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config_path, config))
}

async fn serve(config_path: &Path, config: Config) -> anyhow::Result<()> {
    metrics::set_chain_labels(&config);
    let open_files = hardening::raise_open_files();
    tracing::debug!(?open_files, "descriptor limit");
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before READY=1: a stop or reload right after readiness must be handled.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    hardening::check_private(&config.data.dir)?;
    hardening::check_private(&config.data.database())?;
    let primary: Arc<dyn KeyBackend> = match config.keystore.backend {
        BackendKind::Software => open_software(&config)?,
        BackendKind::Pkcs11 => {
            super::keys::prepare_data_dir(&config.data.dir)?;
            Arc::new(open_pkcs11(&config).context("opening the PKCS#11 token")?)
        }
    };
    if let Err(why) = hardening::lock_memory() {
        tracing::warn!("memory not locked: {why}");
    }
    let readiness = Readiness::default();
    let backend = super::cloud::with_cloud_keys(&config, primary, &readiness).await?;
    let keys = backend.keys();
    for key in &keys {
        println!("keyguard: key {}", describe(key));
        metrics::keys_loaded(backend.backend_of(&key.id), key.scheme());
    }

    if let Some(m) = &config.metrics {
        let handle = metrics::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
        let addr = server::metrics_http::start(m.address, handle, readiness.clone())
            .await
            .with_context(|| format!("binding the metrics listener on {}", m.address))?;
        println!("keyguard: metrics http://{addr}/metrics");
    }

    let store = Store::open_configured(&config.store, &config.data.database())
        .with_context(|| format!("opening {}", config.data.database().display()))?;
    store
        .audit_log()
        .configure_bounds(config.audit.clone(), Some(config.data.dir.clone()));
    let state = store.state_db().context("opening control state")?;
    let kill = Arc::new(
        KillSwitch::load(state.clone(), config.data.kill_file()).context("loading kill switch")?,
    );
    let vault = Arc::new(open_vault(&config, &state)?);
    let clients = Arc::new(ClientBook::default());
    clients.set_configured(&config.clients);
    clients.load(&state).context("loading managed clients")?;
    if let Some(name) = clients.name_clash(&config.clients) {
        anyhow::bail!(
            "client {name:?} is in the config file and managed through the admin API; \
             rename one (`keyguard clients remove {name}`)"
        );
    }
    let approvals = Approvals::new(state.clone()).with_caps(
        config.admin.max_pending_approvals_per_client,
        config.admin.max_pending_approvals,
    );
    for id in approvals
        .recover_unreleased(crate::store::now_ms())
        .context("recovering approvals")?
    {
        tracing::warn!(approval = %id, "approval consumed by a signature that was never released (crash); approved again");
    }
    let approval_book = approvals.clone();
    let eth2_approvals = approvals.clone();
    let guard = Arc::new(
        Guard::new(&config, backend.clone(), store.audit_log())
            .with_people(kill.clone(), approvals.clone())
            .with_cometbft(store.watermarks())
            .with_spend_history(state.clone()),
    );
    guard
        .restore_state(&store)
        .context("restoring velocity counters and nonces")?;
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let admin_socket = if config.admin.enabled {
        let ctx = Arc::new(
            AdminContext::new(
                config.admin.clone(),
                state.clone(),
                store.audit_log(),
                kill.clone(),
                approvals,
                reload_tx,
            )
            .with_vault(vault)
            .with_clients(clients.clone())
            .with_key_list(console_keys(&config, &keys, backend.as_ref()))
            .with_readiness(readiness.clone()),
        );
        let path = config.admin_socket();
        if let (Some(addr), Some(tls)) = (config.admin.tcp, &config.admin.tls) {
            let bound = server::admin::tcp::start(addr, tls, ctx.clone())
                .await
                .with_context(|| format!("binding the admin TLS listener on {addr}"))?;
            println!("keyguard: admin https://{bound}");
        }
        server::admin::start(&path, ctx)
            .await
            .with_context(|| format!("binding the admin socket {}", path.display()))?;
        println!("keyguard: admin unix:{}", path.display());
        Some(path)
    } else {
        None
    };
    let (all_off, off) = kill.status();
    if all_off || !off.is_empty() {
        println!("keyguard: kill switch on: all={all_off} keys={off:?}");
    }
    super::people::spawn_kill_file_watch(kill.clone(), store.audit_log());
    let anchorer = match &config.audit.anchors {
        Some(audit) => {
            let anchorer = Arc::new(super::anchor::Anchorer::new(audit)?);
            super::anchor::spawn(anchorer.clone(), state.clone(), &audit.anchor_interval);
            println!("keyguard: audit anchors {}", audit.anchor_file.display());
            Some(anchorer)
        }
        None => None,
    };
    let anchor_state = state.clone();
    super::people::spawn_head_log(state, &config.admin.audit_head_interval);
    super::people::spawn_control_gauges(kill.clone(), approval_book);

    let mut handles = Vec::new();
    let mut auths = Vec::new();
    for listener in &config.listeners {
        match listener.protocol {
            Protocol::EvmJsonRpc => {
                let running = server::evm::start(&config, listener, guard.clone(), clients.clone())
                    .await
                    .with_context(|| {
                        format!("binding listener {} on {}", listener.name, listener.address)
                    })?;
                let s = if listener.tls.is_some() { "s" } else { "" };
                println!(
                    "keyguard: listener {} evm-jsonrpc http{s}://{addr} ws{s}://{addr}",
                    listener.name,
                    addr = running.local_addr
                );
                handles.push(running.handle);
                auths.push((listener.name.clone(), running.auth));
            }
        }
    }
    if let (Some(e), Some(eth2)) = (
        &config.eth2,
        super::eth2::guard(&config, &store, kill.clone(), eth2_approvals)?,
    ) {
        let n = eth2.public_keys().len();
        let addr = server::eth2::start(&config, e, eth2)
            .await
            .with_context(|| format!("binding the eth2 listener on {}", e.address))?;
        let s = if e.tls.is_some() { "s" } else { "" };
        println!(
            "keyguard: eth2 http{s}://{addr} network={} bls_keys={n}",
            e.network
        );
    }
    let privval_tasks = start_validators(&config, backend.as_ref(), &guard)?;
    readiness.set_ready();
    println!("keyguard: ready");
    tracing::info!(listeners = handles.len(), "ready");
    notify(&[NotifyState::Ready]);
    spawn_watchdog();

    let mut reloader = Reloader {
        path: config_path.to_owned(),
        current: config,
        guard: guard.clone(),
        auths,
        clients,
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => {
                // Off at once; the wait for in-flight requests runs in its own task so this
                // loop keeps serving SIGTERM and SIGHUP meanwhile.
                kill.switch_off(crate::access::kill::ALL_KEYS);
                println!("keyguard: SIGUSR1: every key switched off, draining requests in flight");
                let (kill, audit) = (kill.clone(), store.audit_log());
                tokio::spawn(async move {
                    super::people::emergency_stop(&kill, &audit, "SIGUSR1").await;
                });
            }
            Some(reply) = reload_rx.recv() => {
                let outcome = reloader.reload().map_err(|e| format!("{e:#}"));
                println!("keyguard: {}", if outcome.is_ok() { "reloaded" } else { "reload rejected" });
                metrics::reload(if outcome.is_ok() { "applied" } else { "rejected" });
                let _ = reply.send(outcome);
            }
            _ = hangup.recv() => {
                notify(&[NotifyState::Reloading]);
                match reloader.reload() {
                    Ok(()) => {
                        println!("keyguard: reloaded");
                        tracing::info!("configuration reloaded");
                        metrics::reload("applied");
                    }
                    Err(e) => {
                        println!("keyguard: reload rejected: {e:#}");
                        tracing::error!("reload rejected, previous configuration stays: {e:#}");
                        metrics::reload("rejected");
                    }
                }
                notify(&[NotifyState::Ready]);
            }
        }
    }
    drop(reloader);
    tracing::info!("stopping: finishing in-flight requests");
    notify(&[NotifyState::Stopping]);
    for h in &handles {
        let _ = h.stop();
    }
    for h in handles {
        h.stopped().await;
    }
    // Aborting is safe at any await point: a signature leaves only after its watermark commit.
    for t in &privval_tasks {
        t.abort();
    }
    for t in privval_tasks {
        let _ = t.await;
    }
    drop(guard);
    if let Some(anchorer) = anchorer {
        // Every row is written: anchor the final head, so a restart sees the whole log anchored.
        let _ = store.audit_log().flush().await;
        tokio::task::spawn_blocking(move || super::anchor::final_anchor(&anchorer, &anchor_state))
            .await
            .ok();
    }
    if let Some(path) = admin_socket {
        let _ = std::fs::remove_file(path);
    }
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("closing the store")??;
    Ok(())
}

/// Starts dialing every `[[validators]]` entry; prints one stable line per validator.
fn start_validators(
    config: &Config,
    backend: &dyn KeyBackend,
    guard: &Arc<Guard>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for v in &config.validators {
        let name = v.display_name();
        let key = KeyId::new(v.key.as_str())?;
        let public_key = backend
            .public_key(&key)
            .with_context(|| format!("validator {name}: key {key}"))?;
        let addr = v
            .parsed_addr()
            .map_err(|e| anyhow::anyhow!("validator {name}: addr: {e}"))?;
        let client = PrivvalClient {
            target: CometbftTarget {
                name: name.clone(),
                chain_id: v.chain_id.clone(),
                key: key.clone(),
                public_key,
                limits: v.limits(),
                new_validator: v.new_validator,
            },
            addr,
            version: v.protocol,
            retry_max: Duration::from_millis(v.retry_max_ms),
        };
        println!(
            "keyguard: validator {name} chain {} key {key} {} protocol {}",
            v.chain_id, v.addr, v.protocol
        );
        tasks.push(server::privval::start(guard.clone(), client));
    }
    Ok(tasks)
}

/// The TOTP secret vault: sealed under the keystore passphrase. A PKCS#11 deployment without a
/// keystore passphrase stores them raw (in the 0600 database) and says so at every start.
fn open_vault(config: &Config, state: &crate::store::StateDb) -> anyhow::Result<TotpVault> {
    let passphrase = match config.keystore.backend {
        BackendKind::Software => Some(super::keys::passphrase(config)?),
        BackendKind::Pkcs11 => super::keys::passphrase(config).ok(),
    };
    match passphrase {
        Some(p) => {
            TotpVault::open(state, &p, super::keys::kdf(config)).context("opening the TOTP secrets")
        }
        None => {
            println!(
                "keyguard: WARNING: no keystore passphrase ({}); users' TOTP secrets are stored \
                 unencrypted",
                config.keystore.passphrase_env
            );
            tracing::warn!("TOTP secrets are not encrypted at rest (no passphrase)");
            Ok(TotpVault::without_key())
        }
    }
}

/// The software keystore, creating the configured dev keys when it is empty.
fn open_software(config: &Config) -> anyhow::Result<Arc<dyn KeyBackend>> {
    let keystore = open_keystore(config)?;
    if keystore.keys().is_empty() {
        for scheme in &config.keystore.create_on_first_start {
            let id = KeyId::new(format!("dev-{scheme}"))?;
            let info = keystore.generate(id, *scheme)?;
            println!("keyguard: created key {}", describe(&info));
            if *scheme == Scheme::Secp256k1 {
                let address = keyguard_evm::address_of(&info.public_key).unwrap_or_default();
                println!("keyguard: EVM address {}", address.to_checksum(None));
            }
        }
    }
    Ok(Arc::new(keystore))
}

/// Tells systemd (when started by it) about a state change; a no-op elsewhere.
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// Pings systemd's watchdog at half its interval. The pings come from the async runtime, so a
/// wedged runtime stops them and systemd restarts the service.
fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) else {
        return;
    };
    let period = interval / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    });
}

/// The configured keys as the web console's Keys page lists them, each with the policy that
/// governs it (the first matching one, as the guard applies it).
fn console_keys(
    config: &Config,
    keys: &[crate::backend::KeyInfo],
    backend: &dyn KeyBackend,
) -> Vec<server::admin::console::KeyRow> {
    keys.iter()
        .map(|k| {
            let mut line = describe(k)
                .splitn(3, ' ')
                .map(str::to_owned)
                .collect::<Vec<_>>();
            line.resize(3, String::new());
            let id = k.id.to_string();
            let policy = config
                .policies
                .iter()
                .find(|p| p.keys.iter().any(|x| x == "*" || *x == id))
                .map_or_else(|| "(none: refused)".to_owned(), |p| p.name.clone());
            server::admin::console::KeyRow {
                backend: backend.backend_of(&k.id).to_owned(),
                id,
                scheme: line[1].clone(),
                public: line[2].clone(),
                policy,
            }
        })
        .collect()
}
