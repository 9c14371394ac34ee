#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerwire_security::seal::fuzz_open(data);
});
