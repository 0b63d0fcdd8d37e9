#![no_main]
//! See keyguard::fuzz_harness::evm_signed_transaction for the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::evm_signed_transaction(data));
