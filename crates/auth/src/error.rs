//! Errors of loading password and ACL files. Every parse error names the file, the line and how to fix it.

use std::path::PathBuf;

/// Why a password or ACL file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("{}: the file is not UTF-8 text", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A line of a password file is wrong.
    #[error("{origin}:{line}: {problem}")]
    PasswordLine {
        /// The file's name as given to the parser.
        origin: String,
        /// One-based line number.
        line: usize,
        /// What is wrong with it.
        problem: PasswordLineError,
    },
    /// A line of an ACL file is wrong.
    #[error("{origin}:{line}: {problem}")]
    AclLine {
        /// The file's name as given to the parser.
        origin: String,
        /// One-based line number.
        line: usize,
        /// What is wrong with it.
        problem: AclLineError,
    },
    /// The operating system's random number generator failed, so no salt could be made.
    #[error("the system random number generator failed; no salt could be made")]
    Random,
}

/// What is wrong with one line of a password file (or with one hash).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordLineError {
    /// No `:` between username and hash.
    #[error("expected username:hash, found no ':'")]
    MissingColon,
    /// Nothing before the `:`.
    #[error("the username before ':' is empty")]
    EmptyUsername,
    /// The part after `:` does not start with `$`, so it is a plain-text password.
    #[error("the password of {0:?} is not hashed; hash the file with skein passwd -U FILE")]
    NotHashed(String),
    /// A `$N$` hash other than `$6$` and `$7$`.
    #[error("unknown hash type \"{0}\"; regenerate with skein passwd")]
    UnknownHashType(String),
    /// The hash has the wrong number of `$`-separated fields.
    #[error("malformed \"{0}\" hash: expected {1}; regenerate with skein passwd")]
    MalformedHash(&'static str, &'static str),
    /// The PBKDF2 iteration count is not a positive integer.
    #[error("invalid PBKDF2 iteration count {0:?}; expected a positive integer such as 101")]
    InvalidIterations(String),
    /// The salt is not standard base64 or is empty.
    #[error("the salt is not valid base64")]
    InvalidSalt,
    /// The hash is not standard base64 of a 64-byte SHA-512 output.
    #[error("the hash is not base64 of 64 bytes (a SHA-512 output)")]
    InvalidHash,
}

/// What is wrong with one line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclLineError {
    /// The first word is not `topic`, `pattern` or `user`.
    #[error("unknown keyword \"{0}\"; lines start with topic, pattern, user or # (a comment)")]
    UnknownKeyword(String),
    /// The word before the topic is not an access word.
    #[error("unknown access \"{0}\"; use read, write, readwrite or deny (a topic with spaces needs one of them first)")]
    UnknownAccess(String),
    /// `topic` or `pattern` with nothing after it, or only an access word.
    #[error("{0} line has no topic; write \"{0} [read|write|readwrite|deny] TOPIC\"")]
    MissingTopic(&'static str),
    /// `user` with no name after it.
    #[error("user line has no username; write \"user USERNAME\"")]
    MissingUsername,
    /// The topic is not a valid topic filter.
    #[error("invalid topic \"{0}\": {1}")]
    InvalidTopic(String, &'static str),
}
