//! `keyguard start`: load config and keys, open the store, bind listeners, serve until told to
//! stop. Startup lines on stdout are a stable interface (tests and scripts read them).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyguard_chain::{KeyId, Scheme};

use super::keys::{describe, open_keystore};
use crate::backend::KeyBackend;
use crate::config::{Config, Protocol};
use crate::guard::{CometbftTarget, Guard};
use crate::server;
use crate::server::privval::PrivvalClient;
use crate::store::Store;

pub(crate) fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let keystore = open_keystore(&config)?;
    if keystore.keys().is_empty() {
        for scheme in &config.keystore.create_on_first_start {
            let id = KeyId::new(format!("dev-{scheme}"))?;
            let info = keystore.generate(id, *scheme)?;
            println!("keyguard: created key {}", describe(&info));
            if *scheme == Scheme::Secp256k1 {
                println!(
                    "keyguard: EVM address {}",
                    describe(&info).rsplit(' ').next().unwrap_or("")
                );
            }
        }
    }
    for key in keystore.keys() {
        println!("keyguard: key {}", describe(&key));
    }
    let backend: Arc<dyn KeyBackend> = Arc::new(keystore);

    let store = Store::open(&config.data.database())
        .with_context(|| format!("opening {}", config.data.database().display()))?;
    let guard = Arc::new(
        Guard::new(&config, backend.clone(), store.audit_log()).with_cometbft(store.watermarks()),
    );

    let mut handles = Vec::new();
    for listener in &config.listeners {
        match listener.protocol {
            Protocol::EvmJsonRpc => {
                let running = server::evm::start(&config, listener, guard.clone())
                    .await
                    .with_context(|| {
                        format!("binding listener {} on {}", listener.name, listener.address)
                    })?;
                println!(
                    "keyguard: listener {} evm-jsonrpc http://{addr} ws://{addr}",
                    listener.name,
                    addr = running.local_addr
                );
                handles.push(running.handle);
            }
        }
    }
    let privval_tasks = start_validators(&config, backend.as_ref(), &guard)?;
    println!("keyguard: ready");
    tracing::info!(listeners = handles.len(), "ready");

    shutdown_signal().await;
    tracing::info!("stopping: finishing in-flight requests");
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
