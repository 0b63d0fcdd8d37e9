//! `keyguard start`: load config and keys, open the store, bind listeners, serve until told to
//! stop. Startup lines on stdout are a stable interface (tests and scripts read them).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use keyguard_chain::{KeyId, Scheme};

use super::keys::{describe, open_keystore, open_pkcs11};
use crate::backend::KeyBackend;
use crate::config::{BackendKind, Config, Protocol};
use crate::guard::Guard;
use crate::server;
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
    let backend: Arc<dyn KeyBackend> = match config.keystore.backend {
        BackendKind::Software => open_software(&config)?,
        BackendKind::Pkcs11 => {
            super::keys::prepare_data_dir(&config.data.dir)?;
            let token = open_pkcs11(&config).context("opening the PKCS#11 token")?;
            Arc::new(token)
        }
    };
    for key in backend.keys() {
        println!("keyguard: key {}", describe(&key));
    }

    let store = Store::open(&config.data.database())
        .with_context(|| format!("opening {}", config.data.database().display()))?;
    let guard = Arc::new(Guard::new(&config, backend, store.audit_log()));

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
    drop(guard);
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("closing the store")??;
    Ok(())
}

fn open_software(config: &Config) -> anyhow::Result<Arc<dyn KeyBackend>> {
    let keystore = open_keystore(config)?;
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
    Ok(Arc::new(keystore))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
