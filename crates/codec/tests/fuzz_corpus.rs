//! The fuzz targets of `fuzz/` run as a bounded test on stable Rust: over the recorded client streams, every
//! one-byte change of them, every prefix, and a fixed number of pseudo-random inputs. A panic here is a codec bug;
//! `cargo fuzz run packet_v5` (nightly) explores the same checks without a bound.

use skein_codec::ProtocolVersion::{self, V5, V31, V311};
use skein_codec::fuzzing::{self, Rng};

const VERSIONS: [ProtocolVersion; 3] = [V31, V311, V5];

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the recorded fixtures are missing");
    files.iter().map(|p| std::fs::read(p).expect("readable")).collect()
}

#[test]
fn recorded_streams_their_prefixes_and_one_byte_changes() {
    let (mut inputs, mut decoded) = (0usize, 0usize);
    for data in corpus() {
        for v in VERSIONS {
            fuzzing::packet_stream(&data, v);
            for end in 0..data.len() {
                fuzzing::packet_stream(&data[..end], v);
            }
        }
        for i in 0..data.len() {
            for x in [0x01u8, 0x80, 0xff, 0x7f, 0x10] {
                let mut m = data.clone();
                m[i] ^= x;
                for v in VERSIONS {
                    inputs += 1;
                    decoded += fuzzing::packet_stream(&m, v);
                }
            }
        }
    }
    // Most changed streams still yield their first packets: the checks ran on decoded packets, not only on errors.
    assert!(decoded > inputs, "{decoded} packets from {inputs} inputs");
}

#[test]
fn pseudo_random_inputs() {
    let mut rng = Rng(0x5ce1_f00d_dead_beef);
    let corpus = corpus();
    let mut decoded = 0;
    for round in 0..300_000u32 {
        let len = (rng.next() % 96) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half the inputs start with a plausible fixed header, so they reach the packet bodies.
        if round % 2 == 0 && !data.is_empty() {
            let first = [0x10u8, 0x20, 0x30, 0x32, 0x35, 0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xa2, 0xb0, 0xe0, 0xf0];
            data[0] = first[(rng.next() % first.len() as u64) as usize];
            if data.len() > 1 {
                data[1] = (len - 2) as u8;
            }
        }
        // And some are a recorded stream with random bytes spliced in.
        if round % 7 == 0 {
            let mut base = corpus[(rng.next() % corpus.len() as u64) as usize].clone();
            let at = (rng.next() as usize) % (base.len() + 1);
            base.splice(at..at, data.iter().copied().take(4));
            data = base;
        }
        decoded += fuzzing::packet_stream(&data, VERSIONS[round as usize % 3]);
    }
    assert!(decoded > 10_000, "only {decoded} random inputs decoded to packets");
}

#[test]
fn pseudo_random_filters_and_topics() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let alphabet = b"ab/+#$\xff";
    for _ in 0..100_000 {
        let len = (rng.next() % 12) as usize;
        let data: Vec<u8> = (0..len).map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize]).collect();
        fuzzing::topic_match(&data);
    }
}
