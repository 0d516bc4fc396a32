//! Decodes arbitrary bytes as an MQTT 3.1.1 packet stream; see `skein_codec::fuzzing::packet_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = skein_codec::fuzzing::packet_stream(data, skein_codec::ProtocolVersion::V311);
});
