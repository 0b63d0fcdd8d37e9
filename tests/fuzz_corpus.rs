//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`) through the same harness the
//! fuzzer runs, so an input that once crashed a decoder fails CI if it ever crashes again.

use keyguard::fuzz_harness::TARGETS;

#[test]
fn every_fuzz_corpus_replays_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, harness) in TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!("{}: {e} (every target needs a seed corpus)", dir.display())
        });
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} makes the harness panic",
                path.display()
            );
            replayed += 1;
        }
        assert!(replayed > 0, "{name}: empty corpus");
    }
}
