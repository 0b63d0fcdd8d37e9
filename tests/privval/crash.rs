//! SIGKILL at random moments while two sentries push signing load with conflicting requests;
//! after every restart: no two different blocks were ever released for one height/round/step,
//! and the stored watermark is never behind anything released nor behind its earlier value.
//!
//! `KEYGUARD_CRASH_KILLS` sets the number of kills (default 8; the reliability harness runs
//! `KEYGUARD_CRASH_KILLS=200 cargo test --release --test privval crash`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use crate::harness::{cli, config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, Ask, Node, Ver};

/// (height, round, step) with steps proposal 0 < prevote 1 < precommit 2.
type Hrs = (i64, i32, i32);

fn ask_for(n: i64, block: u8) -> (Hrs, Ask) {
    let (h, s) = (n / 3 + 1, (n % 3) as i32);
    let ask = match s {
        0 => Ask::proposal(h, 0, block, now()),
        _ => Ask::vote(s, h, 0, Some(block), now()),
    };
    ((h, 0, s), ask)
}

fn stored_hrs(config: &std::path::Path) -> Option<Hrs> {
    let (ok, out, err) = cli(&[
        "state",
        "show",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "state show failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = v.as_array()?.first()?;
    let step = match row["step"].as_str()? {
        "propose" => 0,
        "prevote" => 1,
        "precommit" => 2,
        _ => -1,
    };
    Some((row["height"].as_i64()?, row["round"].as_i64()? as i32, step))
}

#[test]
fn sigkill_under_load_never_releases_conflicting_signatures() {
    let kills: usize = std::env::var("KEYGUARD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let (unix, unix_addr) = NodeListener::unix(&dir.path().join("a.sock"));
    let (tcp, tcp_addr) = NodeListener::tcp();
    let specs = [
        ValidatorSpec {
            name: "a".into(),
            chain_id: "crash-chain".into(),
            addr: unix_addr,
            protocol: "v0.38",
            new_validator: true,
            extra: String::new(),
        },
        ValidatorSpec {
            name: "b".into(),
            chain_id: "crash-chain".into(),
            addr: tcp_addr,
            protocol: "v1",
            new_validator: true,
            extra: String::new(),
        },
    ];
    let config_path = dir.path().join("keyguard.toml");
    std::fs::write(&config_path, config_text(dir.path(), &specs)).unwrap();

    let released: Mutex<HashMap<Hrs, (u8, Vec<u8>)>> = Mutex::default();
    let next = AtomicI64::new(0);
    let mut last_stored: Option<Hrs> = None;
    let mut total_signed = 0usize;
    for round in 0..kills {
        let mut kg = Keyguard::start_with(&config_path);
        let signed_this_run = Mutex::new(0usize);
        std::thread::scope(|s| {
            for (listener, ver) in [(&unix, Ver::V038), (&tcp, Ver::V1)] {
                let (released, next, signed_this_run) = (&released, &next, &signed_this_run);
                s.spawn(move || {
                    let Some(conn) = listener.try_accept(Duration::from_secs(10)) else {
                        return;
                    };
                    let mut node = Node::new(conn, ver, "crash-chain");
                    if !matches!(node.pubkey(), Some(Ok(_))) {
                        return;
                    }
                    let mut rng = rand::thread_rng();
                    loop {
                        // Mostly the current step; sometimes an older one again. Always one of
                        // two candidate blocks, so sentries and restarts conflict.
                        let cur = next.load(Ordering::SeqCst);
                        // `next` steps back after a kill and can briefly sit below zero.
                        let n = if rng.gen_bool(0.2) {
                            (cur - 1).max(0)
                        } else {
                            cur.max(0)
                        };
                        let block = (n % 100) as u8 * 2 + rng.gen_range(0..2u8);
                        let (hrs, ask) = ask_for(n, block);
                        match node.sign(&ask) {
                            None => return, // killed
                            Some(Ok(r)) => {
                                let mut m = released.lock().unwrap();
                                if let Some((b, _)) = m.get(&hrs) {
                                    assert_eq!(*b, block, "DOUBLE SIGN at {hrs:?}");
                                }
                                m.insert(hrs, (block, r.signature));
                                *signed_this_run.lock().unwrap() += 1;
                                let _ = next.compare_exchange(
                                    n,
                                    n + 1,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                );
                            }
                            Some(Err((code, desc))) => {
                                assert!(code == 1 || code == 4, "{desc}");
                                let _ = next.compare_exchange(
                                    n,
                                    n + 1,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                );
                            }
                        }
                    }
                });
            }
            let pause = rand::thread_rng().gen_range(5..60);
            std::thread::sleep(Duration::from_millis(pause));
            kg.kill();
        });
        total_signed += signed_this_run.into_inner().unwrap();

        let stored = stored_hrs(&config_path);
        let max_released = released.lock().unwrap().keys().max().copied();
        if let Some(m) = max_released {
            assert!(
                stored >= Some(m),
                "kill {round}: stored {stored:?} is behind released {m:?}"
            );
        }
        assert!(
            stored >= last_stored,
            "kill {round}: watermark went backwards"
        );
        last_stored = stored;
        // Resume a little behind the watermark: restarts must refuse conflicts there too.
        next.fetch_sub(1, Ordering::SeqCst);
    }
    assert!(
        total_signed > kills,
        "too little load: {total_signed} signatures"
    );
    eprintln!("crash: {kills} kills, {total_signed} signatures released, none conflicting");
}
