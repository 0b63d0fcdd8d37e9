//! `keyguard config check`: everything `start` would refuse, found without starting and
//! without the passphrase, printed all at once with its location.

use std::path::Path;

use crate::backend::software::SoftwareKeystore;
use crate::config::Config;
use crate::hardening;

/// Runs every check; prints each problem; fails if there was any.
pub(crate) fn run(path: &Path) -> anyhow::Result<()> {
    let config = match Config::load_unvalidated(path) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            anyhow::bail!("{}: 1 problem", path.display());
        }
    };
    let mut problems: Vec<String> = config.problems().iter().map(|p| p.to_string()).collect();
    let where_ = path.display();
    for p in [
        config.data.dir.clone(),
        config.data.keys_dir(),
        config.data.database(),
    ] {
        if let Err(e) = hardening::check_private(&p) {
            problems.push(format!("{where_}: data.dir: {e}"));
        }
    }
    let keys_dir = config.data.keys_dir();
    if keys_dir.exists() {
        // A seed is a key too: its id (Bitcoin) and its `<id>-eth` key, read from the seed
        // file's public header without the passphrase.
        let listed = SoftwareKeystore::list(&keys_dir).and_then(|keys| {
            let seeds = SoftwareKeystore::list_seeds(&keys_dir)?;
            let mut ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
            for s in seeds {
                ids.push(s.id.to_string());
                ids.push(s.eth_key.to_string());
            }
            Ok(ids)
        });
        match listed {
            Ok(keys) => {
                let created = config
                    .keystore
                    .create_on_first_start
                    .iter()
                    .map(|s| format!("dev-{s}"))
                    .collect::<Vec<_>>();
                for (location, pattern) in config.key_references() {
                    let known = pattern == "*"
                        || keys.iter().any(|k| k == pattern)
                        || (keys.is_empty() && created.iter().any(|c| c == pattern));
                    if !known {
                        problems.push(format!(
                            "{where_}: {location}: key {pattern:?} is not in {}",
                            keys_dir.display()
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!("{where_}: keystore: {e}")),
        }
    } else {
        println!(
            "{where_}: note: {} does not exist yet (created on first start); key references not checked",
            keys_dir.display()
        );
    }
    if problems.is_empty() {
        println!("{where_}: OK");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    anyhow::bail!("{where_}: {} problem(s)", problems.len())
}
