//! `skein passwd`: manage a password file the way `mosquitto_passwd` 2.0 does, with the same flags.
//!
//! ```text
//! skein passwd [-H sha512-pbkdf2|sha512] [-c | -D] passwordfile username
//! skein passwd [-H sha512-pbkdf2|sha512] [-c] -b passwordfile username password
//! skein passwd -U passwordfile
//! ```
//!
//! The file is edited line by line: other users' lines, comments and blank lines stay as they are and where they
//! are, and the result replaces the file atomically (a temporary file in the same folder, renamed over it, keeping
//! the old file's permissions; a new file is readable by its owner only). Where `mosquitto_passwd` 2.0.11 differs,
//! this command is kinder: it keeps `#` comments and blank lines (Mosquitto calls them corrupt, and with `-b` then
//! empties the file), `-U` keeps a password's `:` characters (Mosquitto cuts the password at the first one), and
//! `-U` refuses a line that is already hashed rather than hashing the hash.
//!
//! Interactive passwords are read from the terminal with echo turned off through `stty` (when `stty` is missing
//! they are echoed, and a note says so); when standard input is not a terminal, the two lines are read from it.

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::AuthError;
use crate::password_file::{Algorithm, Hash, Line, read_text};

/// The arguments of `skein passwd`, the same as `mosquitto_passwd`'s.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PasswdArgs {
    /// The hash to use; sha512 is only for Mosquitto 1.6 and earlier.
    #[arg(short = 'H', value_enum, value_name = "HASH", default_value_t = HashKind::Sha512Pbkdf2)]
    pub hash: HashKind,
    /// Create a new password file, overwriting an existing one.
    #[arg(short = 'c', conflicts_with_all = ["delete", "upgrade"])]
    pub create: bool,
    /// Delete the user rather than adding or updating its password.
    #[arg(short = 'D', conflicts_with_all = ["batch", "upgrade"])]
    pub delete: bool,
    /// Batch mode: take the password from the command line (visible to other users and in shell history).
    #[arg(short = 'b', conflicts_with = "upgrade")]
    pub batch: bool,
    /// Hash a file of plain-text `username:password` lines in place.
    #[arg(short = 'U')]
    pub upgrade: bool,
    /// The password file to change.
    pub passwordfile: PathBuf,
    /// The user to add, update or delete.
    pub username: Option<String>,
    /// The password, with -b.
    pub password: Option<String>,
}

/// The `-H` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashKind {
    /// PBKDF2-HMAC-SHA512, 101 iterations (`$7$`).
    #[value(name = "sha512-pbkdf2")]
    Sha512Pbkdf2,
    /// One round of salted SHA-512 (`$6$`).
    #[value(name = "sha512")]
    Sha512,
    /// Argon2id, 19 MiB, 2 passes (`$argon2id$`): stronger, but only Skein reads it, not Mosquitto 2.0.
    #[value(name = "argon2id")]
    Argon2id,
}

impl From<HashKind> for Algorithm {
    fn from(kind: HashKind) -> Algorithm {
        match kind {
            HashKind::Sha512Pbkdf2 => Algorithm::default(),
            HashKind::Sha512 => Algorithm::Sha512,
            HashKind::Argon2id => Algorithm::ARGON2ID,
        }
    }
}

/// Why `skein passwd` failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The arguments do not fit together.
    #[error("{0}; see skein passwd --help")]
    Usage(&'static str),
    /// The username cannot be stored in a password file.
    #[error("usernames must not be empty or contain ':' or line breaks")]
    InvalidUsername,
    /// `-D` for a user the file does not have.
    #[error("user {username} not found in {}", path.display())]
    UserNotFound {
        /// The user asked for.
        username: String,
        /// The file.
        path: PathBuf,
    },
    /// The two interactive passwords differ.
    #[error("passwords do not match; nothing was changed")]
    PasswordsDoNotMatch,
    /// An interactive password was empty.
    #[error("empty password; nothing was changed")]
    EmptyPassword,
    /// Input ended, or could not be read, before a password.
    #[error("cannot read the password: {0}")]
    Input(io::Error),
    /// The file to change does not exist or cannot be read.
    #[error("{0}; use -c to create a new password file")]
    Open(AuthError),
    /// The new file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A line `-U` cannot convert.
    #[error("{}:{line}: {problem}; nothing was changed", path.display())]
    Upgrade {
        /// The file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// No salt could be made.
    #[error(transparent)]
    Hash(#[from] AuthError),
}

/// Runs `skein passwd`, prompting on the terminal (or reading standard input when it is not a terminal).
pub fn run(args: PasswdArgs) -> Result<(), PasswdError> {
    if std::io::stdin().is_terminal()
        && let Ok(tty) = fs::OpenOptions::new().read(true).write(true).open("/dev/tty")
    {
        let reader = io::BufReader::new(tty.try_clone().map_err(PasswdError::Input)?);
        return run_with(args, reader, Terminal { tty, echo_off: None });
    }
    run_with(args, io::stdin().lock(), io::stderr())
}

/// Runs `skein passwd` reading interactive passwords as lines of `input`, writing the prompts to `prompt`.
pub fn run_with(args: PasswdArgs, mut input: impl BufRead, mut prompt: impl Prompt) -> Result<(), PasswdError> {
    check_usage(&args)?;
    let path = &args.passwordfile;
    let algorithm = Algorithm::from(args.hash);
    if args.upgrade {
        let text = read_text(path).map_err(PasswdError::Open)?;
        return write_atomically(path, &upgrade(&text, path, algorithm)?);
    }
    let username = args.username.as_deref().unwrap_or_default();
    if username.is_empty() || username.contains([':', '\n', '\r']) {
        return Err(PasswdError::InvalidUsername);
    }
    let existing = if args.create { String::new() } else { read_text(path).map_err(PasswdError::Open)? };
    if args.delete {
        return write_atomically(path, &delete(&existing, username, path)?);
    }
    let password = match &args.password {
        Some(password) => password.clone(),
        None => read_password(&mut input, &mut prompt)?,
    };
    let line = format!("{username}:{}\n", Hash::new(password.as_bytes(), algorithm)?);
    write_atomically(path, &set(&existing, username, &line))
}

fn check_usage(args: &PasswdArgs) -> Result<(), PasswdError> {
    match (args.upgrade, &args.username, &args.password) {
        (true, Some(_), _) => Err(PasswdError::Usage("-U takes only the password file")),
        (false, None, _) => Err(PasswdError::Usage("a username is needed")),
        (false, Some(_), None) if args.batch => Err(PasswdError::Usage("-b needs a password after the username")),
        (false, Some(_), Some(_)) if !args.batch => Err(PasswdError::Usage("a password on the command line needs -b")),
        _ => Ok(()),
    }
}

/// The text with `username`'s lines replaced by `new_line`, or `new_line` appended if it has none.
fn set(text: &str, username: &str, new_line: &str) -> String {
    let mut out = String::with_capacity(text.len() + new_line.len());
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if is_user(line, username) {
            out.push_str(new_line);
            found = true;
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(new_line);
    }
    out
}

fn delete(text: &str, username: &str, path: &Path) -> Result<String, PasswdError> {
    let out: String = text.split_inclusive('\n').filter(|line| !is_user(line, username)).collect();
    if out.len() == text.len() {
        return Err(PasswdError::UserNotFound { username: username.to_owned(), path: path.to_owned() });
    }
    Ok(out)
}

fn upgrade(text: &str, path: &Path, algorithm: Algorithm) -> Result<String, PasswdError> {
    let mut out = String::with_capacity(text.len() * 4);
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let error = |problem| PasswdError::Upgrade { path: path.to_owned(), line: index + 1, problem };
        match Line::parse(line.strip_suffix('\n').unwrap_or(line)) {
            Line::Skip => out.push_str(line),
            Line::NoColon => return Err(error("expected username:password, found no ':'")),
            Line::Entry { username: "", .. } => return Err(error("the username is empty")),
            Line::Entry { rest, .. } if rest.starts_with("$6$") || rest.starts_with("$7$") => {
                return Err(error("this password is already hashed, and -U would hash the hash"));
            }
            Line::Entry { username, rest } => {
                out.push_str(&format!("{username}:{}\n", Hash::new(rest.as_bytes(), algorithm)?));
            }
        }
    }
    Ok(out)
}

fn is_user(line: &str, username: &str) -> bool {
    matches!(Line::parse(line.strip_suffix('\n').unwrap_or(line)), Line::Entry { username: u, .. } if u == username)
}

/// Replaces `path` with `contents` by renaming a temporary file of the same folder over it.
fn write_atomically(path: &Path, contents: &str) -> Result<(), PasswdError> {
    // Write through a symbolic link to the file it names, rather than replacing the link.
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let error = |source| PasswdError::Write { path: path.to_owned(), source };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new().prefix(".skein-passwd").tempfile_in(dir).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    file.as_file().sync_all().map_err(error)?;
    if let Ok(metadata) = fs::metadata(&target) {
        fs::set_permissions(file.path(), metadata.permissions()).map_err(error)?;
    }
    file.persist(&target).map_err(|e| error(e.error))?;
    Ok(())
}

/// Where interactive prompts go, and how echo is turned off while a password is typed.
pub trait Prompt {
    /// Shows `text` (such as `Password: `).
    fn show(&mut self, text: &str) -> io::Result<()>;
    /// Turns echo off until [`Prompt::echo_on`]; the default does nothing.
    fn echo_off(&mut self) {}
    /// Turns echo back on after a password has been read.
    fn echo_on(&mut self) {}
}

impl<W: Write> Prompt for W {
    fn show(&mut self, text: &str) -> io::Result<()> {
        self.write_all(text.as_bytes())?;
        self.flush()
    }
}

/// The controlling terminal, echo switched with `stty` (no unsafe code, no extra crate).
struct Terminal {
    tty: fs::File,
    /// `Some(true)` while `stty -echo` is in effect.
    echo_off: Option<bool>,
}

impl Terminal {
    fn stty(&self, arg: &str) -> bool {
        let Ok(stdin) = self.tty.try_clone() else { return false };
        Command::new("stty").arg(arg).stdin(stdin).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }
}

impl Prompt for Terminal {
    fn show(&mut self, text: &str) -> io::Result<()> {
        self.tty.write_all(text.as_bytes())?;
        self.tty.flush()
    }

    fn echo_off(&mut self) {
        let off = self.stty("-echo");
        if !off && self.echo_off.is_none() {
            let _ = self.tty.write_all(b"(stty is not available: the password will be shown as you type)\n");
        }
        self.echo_off = Some(off);
    }

    fn echo_on(&mut self) {
        if self.echo_off == Some(true) {
            self.stty("echo");
            self.echo_off = Some(false);
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.echo_on();
    }
}

fn read_password(input: &mut impl BufRead, prompt: &mut impl Prompt) -> Result<String, PasswdError> {
    let first = read_line(input, prompt, "Password: ")?;
    if first.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let second = read_line(input, prompt, "Reenter password: ")?;
    if first != second {
        return Err(PasswdError::PasswordsDoNotMatch);
    }
    Ok(first)
}

fn read_line(input: &mut impl BufRead, prompt: &mut impl Prompt, text: &str) -> Result<String, PasswdError> {
    prompt.show(text).map_err(PasswdError::Input)?;
    prompt.echo_off();
    let mut line = String::new();
    let read = input.read_line(&mut line);
    prompt.echo_on();
    prompt.show("\n").map_err(PasswdError::Input)?;
    if read.map_err(PasswdError::Input)? == 0 {
        return Err(PasswdError::Input(io::Error::new(io::ErrorKind::UnexpectedEof, "input ended")));
    }
    let line = line.strip_suffix('\n').unwrap_or(&line);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PasswordFile;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PasswdArgs,
    }

    fn args(argv: &[&str]) -> PasswdArgs {
        Cli::try_parse_from(std::iter::once("passwd").chain(argv.iter().copied())).unwrap().args
    }

    fn run_args(argv: &[&str], stdin: &str) -> Result<(), PasswdError> {
        run_with(args(argv), stdin.as_bytes(), Vec::new())
    }

    fn layout_ok(text: &str) {
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (user, hash) = line.split_once(':').unwrap();
            assert!(!user.is_empty());
            let fields: Vec<&str> = hash.split('$').collect();
            match fields[1] {
                "7" => assert_eq!((fields.len(), fields[2], fields[3].len(), fields[4].len()), (5, "101", 16, 88)),
                "6" => assert_eq!((fields.len(), fields[2].len(), fields[3].len()), (4, 16, 88)),
                other => panic!("unexpected hash type {other}"),
            }
        }
    }

    #[test]
    fn create_batch_update_delete() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let f = file.to_str().unwrap();
        run_args(&["-c", "-b", f, "alice", "one"], "").unwrap();
        run_args(&["-H", "sha512", "-b", f, "bob", "two"], "").unwrap();
        run_args(&["-b", f, "carol", "three"], "").unwrap();
        run_args(&["-b", f, "alice", "uno"], "").unwrap();
        let text = fs::read_to_string(&file).unwrap();
        let users: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(users, ["alice", "bob", "carol"], "order kept, alice updated in place");
        assert!(text.contains("bob:$6$") && text.contains("alice:$7$101$"));
        layout_ok(&text);
        let loaded = PasswordFile::load(&file).unwrap();
        assert!(loaded.verify("alice", b"uno") && !loaded.verify("alice", b"one"));
        assert!(loaded.verify("bob", b"two") && loaded.verify("carol", b"three"));

        run_args(&["-D", f, "bob"], "").unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(!text.contains("bob:") && text.starts_with("alice:") && text.contains("\ncarol:"));
        let err = run_args(&["-D", f, "bob"], "").unwrap_err();
        assert_eq!(err.to_string(), format!("user bob not found in {f}"));

        run_args(&["-c", "-b", f, "dave", "four"], "").unwrap();
        let loaded = PasswordFile::load(&file).unwrap();
        assert_eq!(loaded.usernames().collect::<Vec<_>>(), ["dave"], "-c overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
            fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
            run_args(&["-b", f, "erin", "five"], "").unwrap();
            assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640, "permissions kept");
        }
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn interactive_from_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let f = file.to_str().unwrap();
        let mut prompts = Vec::new();
        run_with(args(&["-c", f, "alice"]), "s3cret\ns3cret\n".as_bytes(), &mut prompts).unwrap();
        assert_eq!(String::from_utf8(prompts).unwrap(), "Password: \nReenter password: \n");
        assert!(PasswordFile::load(&file).unwrap().verify("alice", b"s3cret"));
        run_args(&[f, "bob"], "pw\r\npw\r\n").unwrap();
        assert!(PasswordFile::load(&file).unwrap().verify("bob", b"pw"));

        let before = fs::read_to_string(&file).unwrap();
        assert!(matches!(run_args(&[f, "alice"], "a\nb\n"), Err(PasswdError::PasswordsDoNotMatch)));
        assert!(matches!(run_args(&[f, "alice"], "\n\n"), Err(PasswdError::EmptyPassword)));
        assert!(matches!(run_args(&[f, "alice"], "a\n"), Err(PasswdError::Input(_))));
        assert_eq!(fs::read_to_string(&file).unwrap(), before, "failures change nothing");
    }

    #[test]
    fn keeps_comments_blank_lines_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let f = file.to_str().unwrap();
        let old = Hash::new(b"old", Algorithm::Sha512).unwrap();
        fs::write(&file, format!("# users\n\nbob:{old}\n  # note\ndup:{old}\ndup:{old}")).unwrap();
        run_args(&["-b", f, "dup", "new"], "").unwrap();
        run_args(&["-b", f, "zed", "z"], "").unwrap();
        let text = fs::read_to_string(&file).unwrap();
        let shape: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(shape, ["# users", "", "bob", "  # note", "dup", "dup", "zed"]);
        assert!(text.contains(&format!("bob:{old}\n")));
        let loaded = PasswordFile::load(&file).unwrap();
        assert!(loaded.verify("dup", b"new") && loaded.verify("bob", b"old") && loaded.verify("zed", b"z"));
        run_args(&["-D", f, "dup"], "").unwrap();
        assert!(!fs::read_to_string(&file).unwrap().contains("dup:"), "-D removes every line of the user");
    }

    #[test]
    fn upgrade_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let f = file.to_str().unwrap();
        fs::write(&file, "# plain\nalice:alicepass\nbob:pass:with:colons\r\n\ncarol: spaced \n").unwrap();
        run_args(&["-U", f], "").unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# plain\nalice:$7$101$") && text.contains("\n\ncarol:$7$"));
        layout_ok(&text);
        let loaded = PasswordFile::load(&file).unwrap();
        assert!(loaded.verify("alice", b"alicepass"));
        assert!(loaded.verify("bob", b"pass:with:colons"));
        assert!(loaded.verify("carol", b" spaced "));

        let err = run_args(&["-U", f], "").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{f}:2: this password is already hashed, and -U would hash the hash; nothing was changed")
        );
        fs::write(&file, "alice:x\nnocolon\n").unwrap();
        let err = run_args(&["-U", f], "").unwrap_err().to_string();
        assert_eq!(err, format!("{f}:2: expected username:password, found no ':'; nothing was changed"));
        assert_eq!(fs::read_to_string(&file).unwrap(), "alice:x\nnocolon\n");
    }

    #[test]
    fn usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let m = missing.to_str().unwrap();
        let err = run_args(&["-b", m, "u", "p"], "").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {m}: ")) && err.ends_with("; use -c to create a new password file")
        );
        assert!(matches!(run_args(&["-c", "-b", m, "a:b", "p"], ""), Err(PasswdError::InvalidUsername)));
        assert!(matches!(run_args(&["-b", m, "u"], ""), Err(PasswdError::Usage(_))));
        assert!(matches!(run_args(&[m, "u", "p"], ""), Err(PasswdError::Usage(_))));
        assert!(matches!(run_args(&[m], ""), Err(PasswdError::Usage(_))));
        assert!(matches!(run_args(&["-U", m, "u"], ""), Err(PasswdError::Usage(_))));
        for bad in [&["-c", "-D", m, "u"][..], &["-U", "-b", m], &["-H", "md5", m, "u"], &["-D", "-b", m, "u", "p"]] {
            assert!(Cli::try_parse_from(std::iter::once("passwd").chain(bad.iter().copied())).is_err(), "{bad:?}");
        }
        assert!(!missing.exists());
    }
}
