#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerwire_server::ws::fuzz_upgrade(data);
});
