#![no_main]
//! See keyguard::fuzz_harness::evm_typed_shapes: bytes pick a hostile typed-data shape
//! (type chains, diamonds, cycles, huge arrays), decoded on a 2 MiB stack.
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyguard::fuzz_harness::evm_typed_shapes(data));
