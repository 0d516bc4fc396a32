//! The seed document's quick start, verbatim, against `skein serve` with no flags at all.

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn seed_quick_start_word_for_word() {
    let work = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/seed_quickstart.sh");
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "bash", script, skein_bin()])
        .arg(work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::spawn(&mut cmd).wait_output(WAIT * 3);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quick start failed: {stdout}\n{}\n(needs root for a network namespace: run ./scripts/test as root)",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(!lines.is_empty(), "the subscriber printed nothing");
    assert!(lines.iter().all(|l| *l == "Message from client XYZ"), "{lines:?}");
    // Embedded defaults: state under ./skein-data of the working directory.
    assert!(work.path().join("skein-data/sled").exists(), "no ./skein-data");
    let log = std::fs::read_to_string(work.path().join("skein.log")).unwrap();
    // As Mosquitto 2.0 without a listener: local only mode, anonymous clients allowed.
    assert!(log.contains("127.0.0.1:1883") && log.contains("local only mode"), "{log}");
}
