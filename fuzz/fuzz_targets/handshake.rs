#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peerwire_proto::handshake::fuzz_handshake(data);
});
