//! SIGHUP: re-read the configuration and put its policies and clients in force for the next
//! request. A file that does not parse or validate, or that changes what only a restart can
//! change (data, keystore, listeners, metrics, validators), is rejected and the running config stays.

use std::path::PathBuf;
use std::sync::Arc;

use crate::access::clients::ClientBook;
use crate::access::{AuthSwitch, Authenticator};
use crate::config::{Config, ListenerConfig};
use crate::guard::Guard;

/// What a reload can touch.
pub(crate) struct Reloader {
    pub(crate) path: PathBuf,
    pub(crate) current: Config,
    pub(crate) guard: Arc<Guard>,
    pub(crate) auths: Vec<(String, Arc<AuthSwitch>)>,
    /// Managed clients: kept across reloads; the configured ones are replaced.
    pub(crate) clients: Arc<ClientBook>,
}

fn listener_identity(l: &ListenerConfig) -> impl PartialEq + std::fmt::Debug + '_ {
    (
        &l.name,
        l.protocol,
        l.address,
        l.chain_id,
        l.auth,
        l.max_body_bytes,
        l.connections,
    )
}

fn needs_restart(old: &Config, new: &Config) -> Option<&'static str> {
    if old.dev != new.dev {
        return Some("dev");
    }
    if old.data != new.data {
        return Some("data");
    }
    if old.keystore != new.keystore {
        return Some("keystore");
    }
    if old.metrics != new.metrics {
        return Some("metrics");
    }
    // Validator connections hold their chain, key and limits for their lifetime.
    if old.validators != new.validators {
        return Some("validators");
    }
    let same_listeners = old.listeners.len() == new.listeners.len()
        && old
            .listeners
            .iter()
            .zip(&new.listeners)
            .all(|(a, b)| listener_identity(a) == listener_identity(b));
    (!same_listeners).then_some("listeners")
}

impl Reloader {
    /// Reloads; on error the running configuration is untouched.
    pub(crate) fn reload(&mut self) -> anyhow::Result<()> {
        let new = Config::load(&self.path)?;
        if let Some(section) = needs_restart(&self.current, &new) {
            anyhow::bail!(
                "{}: [{section}] changed; that takes a restart (policies and clients reload)",
                self.path.display()
            );
        }
        if let Some(name) = self.clients.name_clash(&new.clients) {
            anyhow::bail!(
                "{}: client {name:?} is also managed through the admin API; rename one",
                self.path.display()
            );
        }
        self.guard.reload_policies(&new);
        crate::metrics::set_chain_labels(&new);
        self.clients.set_configured(&new.clients);
        for (name, switch) in &self.auths {
            if let Some(listener) = new.listeners.iter().find(|l| &l.name == name) {
                switch
                    .replace(Authenticator::new(&new, listener).with_managed(self.clients.clone()));
            }
        }
        self.current = new;
        Ok(())
    }
}
