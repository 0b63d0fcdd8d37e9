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

/// A deterministic sweep of the typed-data shape space (what `evm_typed_shapes` fuzzes): every
/// combination of type-count class, fanout, dimensions and array length, with pseudo-random
/// sizes, decoded on a 2 MiB stack. Each must be refused with a named field or hash as alloy
/// does within the work bound (both asserted by the harness).
#[test]
fn typed_shape_space_sweep() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut runs = 0;
    for class in [0u8, 39, 200, 250] {
        for fanout in 0..4u8 {
            for dims in 0..4u8 {
                for len in [0u8, 3, 255] {
                    let r = next().to_le_bytes();
                    let input = [class, r[0], fanout, dims, len, r[1], r[2] % 64, r[3], r[4]];
                    keyguard::fuzz_harness::evm_typed_shapes(&input);
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 192);
}
