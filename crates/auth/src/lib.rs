//! Authentication and authorisation files in Mosquitto's formats: the password file (`password_file`, written by
//! `mosquitto_passwd` 2.0 or `skein passwd`), the ACL file (`acl_file`), and the `skein passwd` command itself.
//!
//! This crate reads files and answers questions ("is this password right?", "may this client publish here?"). It
//! knows nothing of sockets, sessions or the broker's configuration: whether a broker without an ACL file allows
//! everything, or what a refused SUBSCRIBE returns, is the broker's decision.
//!
//! ```
//! use skein_auth::{Access, Acl, ClientIdentity, PasswordFile};
//!
//! let passwords = PasswordFile::parse(
//!     "alice:$6$lAKBB59Z7oB90BvS$KYqN/hONs1VXQzakesmmQtA407scpVC7LNhsvbxsRXn2Hio5WZC+hhsQpJGi5/A0+FNyLHitIeBiGsgn5pQJtA==\n",
//!     "passwords.txt",
//! )?;
//! assert!(!passwords.verify("alice", b"wrong"));
//!
//! let acl = Acl::parse("user alice\ntopic read sensors/#\n", "acl.txt")?;
//! let alice = ClientIdentity { username: Some("alice"), client_id: "c1" };
//! assert!(acl.check(&alice, "sensors/kitchen/temp", Access::Read));
//! assert!(!acl.check(&alice, "sensors/kitchen/temp", Access::Write));
//! # Ok::<(), skein_auth::AuthError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl_file;
mod error;
pub mod passwd;
pub mod password_file;
mod topic;

pub use acl_file::{Access, Acl, ClientIdentity};
pub use error::{AclLineError, AuthError, PasswordLineError};
pub use password_file::{Algorithm, Hash, PasswordFile};
