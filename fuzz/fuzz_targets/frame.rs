#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerwire_proto::codec::fuzz_decode(data, 64 * 1024);
});
