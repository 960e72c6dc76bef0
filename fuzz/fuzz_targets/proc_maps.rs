#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| damon_user::fuzz::proc_maps(data));
