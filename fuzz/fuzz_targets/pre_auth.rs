#![no_main]
//! See `pgsidecar::fuzzing::pre_auth` for the input format and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgsidecar::fuzzing::pre_auth(data));
