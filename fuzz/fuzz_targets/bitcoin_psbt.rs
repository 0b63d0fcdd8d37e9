#![no_main]
//! See keyguard::fuzz_harness::bitcoin_psbt for the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::bitcoin_psbt(data));
