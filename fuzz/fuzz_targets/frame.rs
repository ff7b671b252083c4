#![no_main]
//! See `pgsidecar::fuzzing::frame` for the input format and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgsidecar::fuzzing::frame(data));
