#![no_main]
//! See keyguard::fuzz_harness::evm_typed_data for the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::evm_typed_data(data));
