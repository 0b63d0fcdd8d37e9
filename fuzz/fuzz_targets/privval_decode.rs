//! Any bytes through the privval decoder of every wire version, then through the block-field
//! rules, the watermark decision and the sign-bytes encoder: nothing may panic.
//!
//!   cargo +nightly fuzz run privval_decode fuzz/corpus/privval_decode
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyguard_cometbft::fuzzing::exercise(data);
});
