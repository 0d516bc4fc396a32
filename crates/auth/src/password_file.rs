//! Mosquitto 2.0 password files: one `username:hash` per line, the hash in the text form `mosquitto_passwd` writes.
//!
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 (`-H sha512-pbkdf2`, the default, 101 iterations);
//! - `$6$SALT$HASH`: one SHA-512 over the password's bytes followed by the salt's (`-H sha512`, Mosquitto 1.6);
//! - `$argon2id$v=19$m=KIB,t=PASSES,p=LANES$SALT$HASH`: Argon2id in the PHC string form (`-H argon2id`), an opt-in
//!   that Mosquitto 2.0 cannot read: memory-hard, so a stolen file is far slower to attack, at ~19 MiB and tens of
//!   milliseconds per login.
//!
//! Salts are 12 random bytes (16 for Argon2id) and hashes the 64-byte output (32 for Argon2id), in standard base64
//! with padding (without, in the PHC form). Blank lines and
//! lines whose first non-blank character is `#` are skipped, as Mosquitto's broker does. When a username appears
//! twice the last line wins, again as in Mosquitto's broker. Unlike the broker, which logs and drops a line it cannot
//! read, loading fails on it, naming the line: a user silently missing is harder to debug than a refused start.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::rand::SecureRandom as _;

use crate::error::{AuthError, PasswordLineError};

/// Standard base64; writes padding like Mosquitto, reads it present or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The salt length `mosquitto_passwd` uses, in bytes.
pub const SALT_LEN: usize = 12;

/// The length of a SHA-512 output, the stored hash for `$6$` and `$7$`.
const HASH_LEN: usize = 64;

/// What `-H argon2id` writes: a 16-byte salt and a 32-byte hash (the PHC string format's usual sizes).
const ARGON2_SALT_LEN: usize = 16;
const ARGON2_HASH_LEN: usize = 32;

/// The PHC string format's base64: standard alphabet, no padding (read either way).
const BASE64_NO_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a password is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations (Mosquitto 2.0's default).
    Sha512Pbkdf2 {
        /// PBKDF2's iteration count; `mosquitto_passwd` uses [`Algorithm::DEFAULT_ITERATIONS`].
        iterations: NonZeroU32,
    },
    /// `$6$`: SHA-512 of password then salt, for Mosquitto 1.6 and earlier.
    Sha512,
    /// `$argon2id$`: Argon2id (version 0x13) with this memory in KiB, number of passes and lanes.
    Argon2id {
        /// Memory per hash, in KiB (`m=`).
        memory_kib: u32,
        /// Passes over that memory (`t=`).
        passes: u32,
        /// Parallel lanes (`p=`).
        lanes: u32,
    },
}

impl Algorithm {
    /// The iteration count `mosquitto_passwd` 2.0 writes.
    pub const DEFAULT_ITERATIONS: NonZeroU32 = NonZeroU32::new(101).unwrap();

    /// Argon2id with the parameters RFC 9106 and OWASP suggest for a login: 19 MiB, 2 passes, 1 lane.
    pub const ARGON2ID: Algorithm = Algorithm::Argon2id { memory_kib: 19 * 1024, passes: 2, lanes: 1 };

    /// Relative cost, to pick the dummy entry of a file.
    fn cost(self) -> u32 {
        match self {
            Algorithm::Sha512Pbkdf2 { iterations } => iterations.get(),
            Algorithm::Sha512 => 0,
            Algorithm::Argon2id { memory_kib, passes, .. } => memory_kib.saturating_mul(passes),
        }
    }
}

impl Default for Algorithm {
    /// PBKDF2 with 101 iterations, what `mosquitto_passwd` writes without `-H`.
    fn default() -> Self {
        Algorithm::Sha512Pbkdf2 { iterations: Algorithm::DEFAULT_ITERATIONS }
    }
}

/// A salted password hash, parsed from or printed as Mosquitto's text form (`Display`, `FromStr`).
#[derive(Clone, PartialEq, Eq)]
pub struct Hash {
    algorithm: Algorithm,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hash").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl Hash {
    /// Hashes `password` with a fresh random 12-byte salt from the operating system.
    pub fn new(password: &[u8], algorithm: Algorithm) -> Result<Hash, AuthError> {
        let len = if matches!(algorithm, Algorithm::Argon2id { .. }) { ARGON2_SALT_LEN } else { SALT_LEN };
        let mut salt = vec![0; len];
        ring::rand::SystemRandom::new().fill(&mut salt).map_err(|_| AuthError::Random)?;
        Ok(Hash::with_salt(password, algorithm, salt))
    }

    /// Hashes `password` with the given salt (deterministic; for tests and known-answer checks).
    pub fn with_salt(password: &[u8], algorithm: Algorithm, salt: Vec<u8>) -> Hash {
        let len = if matches!(algorithm, Algorithm::Argon2id { .. }) { ARGON2_HASH_LEN } else { HASH_LEN };
        let hash = compute(algorithm, &salt, password, len);
        Hash { algorithm, salt, hash }
    }

    /// The algorithm and its cost.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `password` is the one hashed, comparing in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self.algorithm {
            Algorithm::Sha512Pbkdf2 { iterations } => {
                ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA512, iterations, &self.salt, password, &self.hash)
                    .is_ok()
            }
            Algorithm::Sha512 | Algorithm::Argon2id { .. } => {
                constant_time_eq(&compute(self.algorithm, &self.salt, password, self.hash.len()), &self.hash)
            }
        }
    }
}

/// The hash of `password` under `algorithm`, `len` bytes long (64 for PBKDF2 and SHA-512).
fn compute(algorithm: Algorithm, salt: &[u8], password: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    match algorithm {
        Algorithm::Sha512Pbkdf2 { iterations } => {
            ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA512, iterations, salt, password, &mut out)
        }
        Algorithm::Sha512 => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
            ctx.update(password);
            ctx.update(salt);
            out.copy_from_slice(ctx.finish().as_ref());
        }
        Algorithm::Argon2id { memory_kib, passes, lanes } => {
            // Parameters and lengths were checked when the hash was parsed or chosen. Should hashing fail anyway,
            // the output stays all zeros, and a stored hash of all zeros is refused when the file is read.
            let params = argon2::Params::new(memory_kib, passes, lanes, Some(len));
            if let Ok(params) = params {
                let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                if a.hash_password_into(password, salt, &mut out).is_err() {
                    out.fill(0);
                }
            }
        }
    }
    out
}

/// Equal-length comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (salt, hash) = (BASE64.encode(&self.salt), BASE64.encode(&self.hash));
        match self.algorithm {
            Algorithm::Sha512Pbkdf2 { iterations } => write!(f, "$7${iterations}${salt}${hash}"),
            Algorithm::Sha512 => write!(f, "$6${salt}${hash}"),
            Algorithm::Argon2id { memory_kib, passes, lanes } => {
                let (salt, hash) = (BASE64_NO_PAD.encode(&self.salt), BASE64_NO_PAD.encode(&self.hash));
                write!(f, "$argon2id$v=19$m={memory_kib},t={passes},p={lanes}${salt}${hash}")
            }
        }
    }
}

impl FromStr for Hash {
    type Err = PasswordLineError;

    fn from_str(s: &str) -> Result<Hash, PasswordLineError> {
        let Some(rest) = s.strip_prefix('$') else {
            return Err(PasswordLineError::NotHashed(String::new()));
        };
        let (kind, rest) = rest.split_once('$').unwrap_or((rest, ""));
        let (algorithm, salt, hash) = match kind {
            "7" => {
                let fields: Vec<&str> = rest.split('$').collect();
                let [iterations, salt, hash] = fields[..] else {
                    return Err(PasswordLineError::MalformedHash("$7$", "$7$ITERATIONS$SALT$HASH"));
                };
                let iterations = iterations
                    .parse::<NonZeroU32>()
                    .map_err(|_| PasswordLineError::InvalidIterations(iterations.to_owned()))?;
                (Algorithm::Sha512Pbkdf2 { iterations }, salt, hash)
            }
            "6" => {
                let fields: Vec<&str> = rest.split('$').collect();
                let [salt, hash] = fields[..] else {
                    return Err(PasswordLineError::MalformedHash("$6$", "$6$SALT$HASH"));
                };
                (Algorithm::Sha512, salt, hash)
            }
            "argon2id" => return parse_argon2id(rest),
            other => return Err(PasswordLineError::UnknownHashType(format!("${other}$"))),
        };
        let salt = BASE64.decode(salt).ok().filter(|s| !s.is_empty()).ok_or(PasswordLineError::InvalidSalt)?;
        let hash = BASE64.decode(hash).ok().filter(|h| h.len() == HASH_LEN).ok_or(PasswordLineError::InvalidHash)?;
        Ok(Hash { algorithm, salt, hash })
    }
}

/// `v=19$m=KIB,t=PASSES,p=LANES$SALT$HASH`, what follows `$argon2id$`.
fn parse_argon2id(rest: &str) -> Result<Hash, PasswordLineError> {
    const FORM: &str = "$argon2id$v=19$m=KIB,t=PASSES,p=LANES$SALT$HASH";
    let malformed = || PasswordLineError::MalformedHash("$argon2id$", FORM);
    let fields: Vec<&str> = rest.split('$').collect();
    let ["v=19", params, salt, hash] = fields[..] else { return Err(malformed()) };
    let mut values = [None; 3];
    for part in params.split(',') {
        let (key, value) = part.split_once('=').ok_or_else(malformed)?;
        let slot = ["m", "t", "p"].iter().position(|k| *k == key).ok_or_else(malformed)?;
        values[slot] = Some(value.parse::<u32>().map_err(|_| malformed())?);
    }
    let [Some(memory_kib), Some(passes), Some(lanes)] = values else { return Err(malformed()) };
    let salt = BASE64_NO_PAD.decode(salt).ok().filter(|s| s.len() >= 8).ok_or(PasswordLineError::InvalidSalt)?;
    let hash = BASE64_NO_PAD
        .decode(hash)
        .ok()
        .filter(|h| (16..=64).contains(&h.len()) && h.iter().any(|b| *b != 0))
        .ok_or(PasswordLineError::InvalidHash)?;
    // Argon2's own bounds (memory at least 8 KiB per lane, at least one pass and lane), checked once here.
    argon2::Params::new(memory_kib, passes, lanes, Some(hash.len())).map_err(|_| malformed())?;
    Ok(Hash { algorithm: Algorithm::Argon2id { memory_kib, passes, lanes }, salt, hash })
}

/// One line of a password file, as both the parser and `skein passwd` see it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// Blank or a `#` comment: kept as it is.
    Skip,
    /// `username:rest`, `rest` being a hash (or, before `-U`, a plain password), as written.
    Entry { username: &'a str, rest: &'a str },
    /// Not blank, not a comment, and no `:`.
    NoColon,
}

impl<'a> Line<'a> {
    /// Splits a line (without its line ending; a trailing `\r` is dropped) at its first `:`.
    pub(crate) fn parse(line: &'a str) -> Line<'a> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Line::Skip;
        }
        match line.split_once(':') {
            Some((username, rest)) => Line::Entry { username, rest },
            None => Line::NoColon,
        }
    }
}

/// A loaded password file: who may connect with which password.
#[derive(Debug, Clone)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// Verified against for an unknown username, so that the reply takes as long as for a known one.
    dummy: Hash,
}

impl PasswordFile {
    /// Reads and parses the file at `path`; errors name the path and line.
    pub fn load(path: impl AsRef<Path>) -> Result<PasswordFile, AuthError> {
        let path = path.as_ref();
        PasswordFile::parse(&read_text(path)?, &path.display().to_string())
    }

    /// Parses the text of a password file; `origin` names it in errors (`origin:line: problem`).
    pub fn parse(text: &str, origin: &str) -> Result<PasswordFile, AuthError> {
        let mut users = HashMap::new();
        for (index, line) in text.split('\n').enumerate() {
            let error = |problem| AuthError::PasswordLine { origin: origin.to_owned(), line: index + 1, problem };
            let (username, rest) = match Line::parse(line) {
                Line::Skip => continue,
                Line::NoColon => return Err(error(PasswordLineError::MissingColon)),
                Line::Entry { username, rest } => (username, rest),
            };
            if username.is_empty() {
                return Err(error(PasswordLineError::EmptyUsername));
            }
            let hash = rest.trim_end().parse::<Hash>().map_err(|problem| match problem {
                PasswordLineError::NotHashed(_) => error(PasswordLineError::NotHashed(username.to_owned())),
                problem => error(problem),
            })?;
            users.insert(username.to_owned(), hash);
        }
        let dummy = dummy_for(&users);
        Ok(PasswordFile { users, dummy })
    }

    /// Whether `username` exists and `password` is its password. The hash comparison is constant-time, and an
    /// unknown username costs a hash computation like the file's most common one, so timing does not tell which
    /// usernames exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.verify(password),
            None => {
                let _ = self.dummy.verify(password);
                false
            }
        }
    }

    /// Whether the file has an entry for `username`.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The usernames, in no particular order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }
}

/// A hash of the algorithm and cost most users have (ties: the costlier), of a password nobody knows.
fn dummy_for(users: &HashMap<String, Hash>) -> Hash {
    let mut counts: HashMap<Algorithm, usize> = HashMap::new();
    for hash in users.values() {
        *counts.entry(hash.algorithm).or_default() += 1;
    }
    let algorithm = counts
        .into_iter()
        .max_by_key(|&(algorithm, count)| (count, algorithm.cost()))
        .map_or_else(Algorithm::default, |(algorithm, _)| algorithm);
    Hash::with_salt(b"skein dummy password", algorithm, vec![0; SALT_LEN])
}

/// Reads a file as UTF-8 text, naming the path on failure.
pub(crate) fn read_text(path: &Path) -> Result<String, AuthError> {
    let bytes = std::fs::read(path).map_err(|source| AuthError::Read { path: path.to_owned(), source })?;
    String::from_utf8(bytes).map_err(|_| AuthError::NotUtf8 { path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_hashes_round_trip() {
        for algorithm in [Algorithm::default(), Algorithm::Sha512] {
            let hash = Hash::new(b"secret", algorithm).unwrap();
            let text = hash.to_string();
            let parsed: Hash = text.parse().unwrap();
            assert_eq!(parsed, hash);
            assert_eq!(parsed.to_string(), text);
            assert!(parsed.verify(b"secret"));
            assert!(!parsed.verify(b"Secret"));
            // Layout: 12-byte salt is 16 base64 characters, the 64-byte hash 88 with "==".
            let fields: Vec<&str> = text.split('$').collect();
            assert_eq!(fields[fields.len() - 2].len(), 16);
            assert_eq!(fields[fields.len() - 1].len(), 88);
            assert!(text.ends_with("=="));
        }
        assert!(Hash::new(b"x", Algorithm::default()).unwrap().to_string().starts_with("$7$101$"));
        assert!(Hash::new(b"x", Algorithm::Sha512).unwrap().to_string().starts_with("$6$"));
    }

    #[test]
    fn argon2id_hashes_of_the_reference_implementation_verify_and_ours_round_trip() {
        // Written by argon2-cffi (the reference C implementation) for "correct horse" and "battery staple".
        let small: Hash =
            "$argon2id$v=19$m=1024,t=2,p=1$cZBIlpCoa2UmKoUNFAC5Dg$fHLHFKR/toXI3VYUFt+JBeqbmJGQt5cAWWpqz3cJZSA"
                .parse()
                .unwrap();
        assert!(small.verify(b"correct horse"));
        assert!(!small.verify(b"correct horsE"));
        assert_eq!(small.algorithm(), Algorithm::Argon2id { memory_kib: 1024, passes: 2, lanes: 1 });
        let default: Hash =
            "$argon2id$v=19$m=19456,t=2,p=1$leAUYDYpggbTGdhPYbZ4wA$yQcBDm9CxueiAxw2cTbOeIIaTEWA351pqJarQezX8AQ"
                .parse()
                .unwrap();
        assert_eq!(default.algorithm(), Algorithm::ARGON2ID, "our default is the same as the reference's");
        assert!(default.verify(b"battery staple"));
        // Ours, printed and read back, with the reference's sizes.
        let cheap = Algorithm::Argon2id { memory_kib: 64, passes: 1, lanes: 1 };
        let ours = Hash::new(b"p4ss", cheap).unwrap();
        let text = ours.to_string();
        assert!(text.starts_with("$argon2id$v=19$m=64,t=1,p=1$") && !text.ends_with('='), "no padding: {text}");
        let back: Hash = text.parse().unwrap();
        assert_eq!(back, ours);
        assert!(back.verify(b"p4ss") && !back.verify(b"p4sS"));
        assert_eq!(back.salt.len(), 16);
        assert_eq!(back.hash.len(), 32);
    }

    #[test]
    fn argon2id_line_errors() {
        for bad in [
            "$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=64,t=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(bad.parse::<Hash>().is_err(), "{bad}");
        }
    }

    #[test]
    fn salts_are_random() {
        let a = Hash::new(b"same", Algorithm::default()).unwrap();
        let b = Hash::new(b"same", Algorithm::default()).unwrap();
        assert_ne!(a.to_string(), b.to_string());
    }

    #[test]
    fn line_errors() {
        let valid = Hash::with_salt(b"p", Algorithm::default(), vec![1; 12]).to_string();
        for (text, want) in [
            ("alice".to_owned(), "f:1: expected username:hash, found no ':'"),
            (":$6$a$b".to_owned(), "f:1: the username before ':' is empty"),
            (
                "alice:plain".to_owned(),
                "f:1: the password of \"alice\" is not hashed; hash the file with skein passwd -U FILE",
            ),
            ("a:$5$x$y".to_owned(), "f:1: unknown hash type \"$5$\"; regenerate with skein passwd"),
            (
                "a:$7$101$x".to_owned(),
                "f:1: malformed \"$7$\" hash: expected $7$ITERATIONS$SALT$HASH; regenerate with skein passwd",
            ),
            ("a:$6$x".to_owned(), "f:1: malformed \"$6$\" hash: expected $6$SALT$HASH; regenerate with skein passwd"),
            (
                "a:$7$xx$c2FsdA==$aGFzaA==".to_owned(),
                "f:1: invalid PBKDF2 iteration count \"xx\"; expected a positive integer such as 101",
            ),
            (
                "a:$7$0$c2FsdA==$aGFzaA==".to_owned(),
                "f:1: invalid PBKDF2 iteration count \"0\"; expected a positive integer such as 101",
            ),
            ("a:$6$!!$aGFzaA==".to_owned(), "f:1: the salt is not valid base64"),
            ("a:$6$c2FsdA==$aGFzaA==".to_owned(), "f:1: the hash is not base64 of 64 bytes (a SHA-512 output)"),
            (format!("# c\n\nok:{valid}\n   \nbad"), "f:5: expected username:hash, found no ':'"),
        ] {
            assert_eq!(PasswordFile::parse(&text, "f").unwrap_err().to_string(), want, "{text}");
        }
    }

    #[test]
    fn blank_comment_duplicate_lines() {
        let first = Hash::with_salt(b"first", Algorithm::Sha512, vec![2; 12]);
        let second = Hash::with_salt(b"second", Algorithm::Sha512, vec![3; 12]);
        let text = format!("# comment\n\n  # indented comment\n\t\ndup:{first}\r\ndup:{second}   \n");
        let file = PasswordFile::parse(&text, "f").unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("dup", b"second"));
        assert!(!file.verify("dup", b"first"));
        assert!(!file.verify("nobody", b"second"));
        assert!(PasswordFile::parse("", "f").unwrap().is_empty());
    }

    #[test]
    fn dummy_follows_most_common_algorithm() {
        let mut users = HashMap::new();
        users.insert("a".to_owned(), Hash::with_salt(b"a", Algorithm::Sha512, vec![1]));
        users.insert("b".to_owned(), Hash::with_salt(b"b", Algorithm::Sha512, vec![1]));
        let heavy = Algorithm::Sha512Pbkdf2 { iterations: NonZeroU32::new(1000).unwrap() };
        users.insert("c".to_owned(), Hash::with_salt(b"c", heavy, vec![1]));
        assert_eq!(dummy_for(&users).algorithm(), Algorithm::Sha512);
        users.insert("d".to_owned(), Hash::with_salt(b"d", heavy, vec![1]));
        assert_eq!(dummy_for(&users).algorithm(), heavy);
        assert_eq!(dummy_for(&HashMap::new()).algorithm(), Algorithm::default());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = PasswordFile::parse(&text, "f");
        }

        #[test]
        fn arbitrary_hash_like_lines_never_panic(kind in "[5-7]", a in "[0-9a-zA-Z+/=$]{0,40}", b in "[0-9a-zA-Z+/=$]{0,100}") {
            if let Ok(file) = PasswordFile::parse(&format!("u:${kind}${a}${b}"), "f") {
                let _ = file.verify("u", b"x");
            }
        }
    }
}
