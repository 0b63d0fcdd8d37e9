#![no_main]
//! See keyguard::fuzz_harness::config_toml for the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::config_toml(data));
