#![no_main]
//! See keyguard::fuzz_harness::evm_abi_calldata for the invariants checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::evm_abi_calldata(data));
