#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerwire_server::settings::fuzz_config(data);
});
