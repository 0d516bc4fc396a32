//! Topic filter validation and matching, trie against `topic::matches`; see `skein_codec::fuzzing::topic_match`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    skein_codec::fuzzing::topic_match(data);
});
