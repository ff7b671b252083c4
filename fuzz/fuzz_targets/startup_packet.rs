#![no_main]
//! See `pgsidecar::fuzzing::startup_packet` for the input format and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgsidecar::fuzzing::startup_packet(data));
