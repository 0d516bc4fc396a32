//! Password files written by Mosquitto's own `mosquitto_passwd` (2.0.11) verify here, and files written here are
//! read by it. The fixtures were made with:
//!
//! ```text
//! mosquitto_passwd -c -b mosquitto_passwd.txt alice alicepass
//! mosquitto_passwd -H sha512 -b mosquitto_passwd.txt bob bobpass
//! mosquitto_passwd -b mosquitto_passwd.txt carol 'carol pass:x'
//! mosquitto_passwd -H sha512 -b mosquitto_passwd.txt dave ''
//! printf 'erin:erinpass\nfrank:frankpass\n' > mosquitto_upgraded.txt && mosquitto_passwd -U mosquitto_upgraded.txt
//! ```
//!
//! The tests that run `mosquitto_passwd` itself skip, with a note, where it is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use skein_auth::passwd::{PasswdArgs, run_with};
use skein_auth::{Hash, PasswordFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

const USERS: &[(&str, &[u8])] =
    &[("alice", b"alicepass"), ("bob", b"bobpass"), ("carol", b"carol pass:x"), ("dave", b"")];

#[test]
fn mosquitto_fixture_verifies() {
    let file = PasswordFile::load(fixture("mosquitto_passwd.txt")).unwrap();
    assert_eq!(file.len(), USERS.len());
    for &(user, password) in USERS {
        assert!(file.verify(user, password), "{user} with the right password");
        assert!(!file.verify(user, b"wrong"), "{user} with a wrong password");
        assert!(!file.verify(user, &[password, b"x"].concat()), "{user} with a longer password");
    }
    assert!(!file.verify("mallory", b"alicepass"), "unknown user");
    assert!(!file.verify("", b""), "empty username");

    let upgraded = PasswordFile::load(fixture("mosquitto_upgraded.txt")).unwrap();
    assert!(upgraded.verify("erin", b"erinpass") && upgraded.verify("frank", b"frankpass"));
    assert!(!upgraded.verify("erin", b"frankpass"));
}

#[test]
fn mosquitto_hashes_print_back_identically() {
    let text = std::fs::read_to_string(fixture("mosquitto_passwd.txt")).unwrap();
    for line in text.lines() {
        let (_, hash) = line.split_once(':').unwrap();
        assert_eq!(hash.parse::<Hash>().unwrap().to_string(), hash);
    }
}

#[test]
fn our_hashing_reproduces_mosquitto_hashes() {
    use base64::Engine as _;
    let text = std::fs::read_to_string(fixture("mosquitto_passwd.txt")).unwrap();
    for (line, &(user, password)) in text.lines().zip(USERS) {
        let (name, hash) = line.split_once(':').unwrap();
        assert_eq!(name, user);
        let parsed: Hash = hash.parse().unwrap();
        let salt_b64 = hash.rsplit('$').nth(1).unwrap();
        let salt = base64::engine::general_purpose::STANDARD.decode(salt_b64).unwrap();
        assert_eq!(salt.len(), skein_auth::password_file::SALT_LEN);
        assert_eq!(Hash::with_salt(password, parsed.algorithm(), salt).to_string(), hash, "{user}");
    }
}

#[test]
fn errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwords.txt");
    std::fs::write(&path, "# ok\nalice:$7$101$H4p1S7CSnhEyxA6t$eGV5\n\nbob:$5$abc$def\n").unwrap();
    let err = PasswordFile::load(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}:2: the hash is not base64 of 64 bytes (a SHA-512 output)", path.display()));
    std::fs::write(&path, "# ok\n\n\nbob:$5$abc$def\n").unwrap();
    let err = PasswordFile::load(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}:4: unknown hash type \"$5$\"; regenerate with skein passwd", path.display()));
    let err = PasswordFile::load(dir.path().join("missing")).unwrap_err().to_string();
    assert!(err.starts_with("cannot read ") && err.contains("missing"), "{err}");
}

fn mosquitto_passwd() -> Option<&'static str> {
    let found = Command::new("mosquitto_passwd").arg("-h").output().is_ok();
    if !found {
        eprintln!("note: mosquitto_passwd is not on PATH; skipping the live compatibility check");
    }
    found.then_some("mosquitto_passwd")
}

fn mosquitto(args: &[&str]) {
    let out = Command::new("mosquitto_passwd").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "mosquitto_passwd {args:?}: {stderr}");
}

#[test]
fn live_mosquitto_passwd_files_verify() {
    let Some(_) = mosquitto_passwd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let p = path.to_str().unwrap();
    mosquitto(&["-c", "-b", p, "pbkdf2", "pass one"]);
    mosquitto(&["-H", "sha512", "-b", p, "sha", "pass:two"]);
    let file = PasswordFile::load(&path).unwrap();
    assert!(file.verify("pbkdf2", b"pass one") && file.verify("sha", b"pass:two"));
    assert!(!file.verify("pbkdf2", b"pass:two"));
}

#[test]
fn live_mosquitto_passwd_reads_our_files() {
    let Some(_) = mosquitto_passwd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let p = path.to_str().unwrap();
    let run = |argv: &[&str]| {
        let args = <Cli as clap::Parser>::try_parse_from(std::iter::once("passwd").chain(argv.iter().copied()));
        run_with(args.unwrap().args, &b""[..], Vec::new()).unwrap();
    };
    run(&["-c", "-b", p, "ours", "secret"]);
    run(&["-H", "sha512", "-b", p, "ours6", "secret6"]);
    // mosquitto_passwd reports "Corrupt password file" on any line it cannot read; adding a user rewrites the
    // file through its parser, so our lines surviving byte for byte shows it read them.
    let ours = std::fs::read_to_string(&path).unwrap();
    mosquitto(&["-b", p, "theirs", "x"]);
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with(&ours), "{ours}\n---\n{after}");
    // And -D through mosquitto_passwd, then our parser, then our -D.
    mosquitto(&["-D", p, "ours6"]);
    let file = PasswordFile::load(&path).unwrap();
    assert!(file.verify("ours", b"secret") && file.verify("theirs", b"x") && !file.contains("ours6"));
    run(&["-D", p, "theirs"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: PasswdArgs,
}
