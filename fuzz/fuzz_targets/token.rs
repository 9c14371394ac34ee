#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerwire_security::token::fuzz_verify(data);
});
