#![no_main]
//! See keyguard::fuzz_harness::signet_block for the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::signet_block(data));
