#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rds_auth_proxy::fuzzing::config_args(data));
