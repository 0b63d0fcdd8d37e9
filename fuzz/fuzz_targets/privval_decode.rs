#![no_main]
//! See keyguard::fuzz_harness::privval_decode (and keyguard_cometbft::fuzzing) for the
//! invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::privval_decode(data));
