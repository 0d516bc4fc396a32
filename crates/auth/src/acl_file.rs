//! Mosquitto ACL files (`acl_file`): which client may publish to, receive from and subscribe to which topics.
//!
//! ```text
//! # comment
//! topic read public/#             # before any `user` line: for clients without a username
//! user alice                      # the lines below, up to the next `user`, are alice's
//! topic readwrite home/alice/#
//! topic deny home/alice/secret
//! pattern write devices/%c/state  # every client, %c = its client id, %u = its username
//! ```
//!
//! The access word is `read`, `write`, `readwrite` or `deny`; without one the line grants `readwrite`, and a topic
//! with spaces needs one. `user` sections with the same name add up. A pattern with `%u` does not apply to clients
//! without a username, and, as in Mosquitto, no pattern applies to a client whose username or client id contains
//! `+` or `#`.
//!
//! A decision is made as Mosquitto 2.0 makes it (checked against its broker): first the client's own entries (its
//! `user` section, or the anonymous section when it has no username), where a matching `deny` refuses and then a
//! matching grant allows; only if neither matched, the patterns in the same way; otherwise refused. So `deny` wins
//! over grants of the same section, and a grant in a user's own section wins over a `deny` pattern.
//!
//! Read more leniently than Mosquitto: tabs separate words, and an indented `#` line is a comment (Mosquitto refuses
//! both). More strictly: `topic read` without a topic is an error (Mosquitto takes it as the topic `read`).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{AclLineError, AuthError};
use crate::topic;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive a message published to this topic name (checked at each delivery).
    Read,
    /// Publish to this topic name.
    Write,
    /// Subscribe to this topic filter (which may hold `+` and `#`).
    ///
    /// Mosquitto 2.0's `acl_file` accepts every SUBSCRIBE and filters at delivery. Here a subscription is accepted
    /// when at least one `read`/`readwrite` entry that applies overlaps the filter (some topic matches both), and
    /// refused when none does or a `deny` entry that decides first covers the whole filter: with ACL `sensors/+/temp`
    /// both `sensors/a/temp` and `sensors/#` are accepted, `other/#` is not. So a subscription that Mosquitto would
    /// deliver messages to is never refused; [`Access::Read`] stays the check at delivery.
    Subscribe,
}

/// Who is asking: what the broker knows of the client from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity<'a> {
    /// The username the client authenticated with, if any.
    pub username: Option<&'a str>,
    /// The client identifier (assigned by the broker if the client sent none).
    pub client_id: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn parse(word: &str) -> Option<Grant> {
        Some(match word {
            "read" => Grant::Read,
            "write" => Grant::Write,
            "readwrite" => Grant::ReadWrite,
            "deny" => Grant::Deny,
            _ => return None,
        })
    }

    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read | Access::Subscribe) | (Grant::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    grant: Grant,
    topic: String,
}

/// A loaded ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Entries before the first `user` line: for clients without a username.
    anonymous: Vec<Entry>,
    users: HashMap<String, Vec<Entry>>,
    /// `pattern` lines, `%c` and `%u` not yet substituted.
    patterns: Vec<Entry>,
}

impl Acl {
    /// Reads and parses the file at `path`; errors name the path and line.
    pub fn load(path: impl AsRef<Path>) -> Result<Acl, AuthError> {
        let path = path.as_ref();
        Acl::parse(&crate::password_file::read_text(path)?, &path.display().to_string())
    }

    /// Parses the text of an ACL file; `origin` names it in errors (`origin:line: problem`).
    pub fn parse(text: &str, origin: &str) -> Result<Acl, AuthError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, line) in text.split('\n').enumerate() {
            let error = |problem| AuthError::AclLine { origin: origin.to_owned(), line: index + 1, problem };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" if rest.is_empty() => return Err(error(AclLineError::MissingUsername)),
                "user" => {
                    acl.users.entry(rest.to_owned()).or_default();
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let keyword = if keyword == "topic" { "topic" } else { "pattern" };
                    let entry = parse_entry(keyword, rest).map_err(error)?;
                    let list = match (keyword, &user) {
                        ("pattern", _) => &mut acl.patterns,
                        (_, None) => &mut acl.anonymous,
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default(),
                    };
                    list.push(entry);
                }
                other => return Err(error(AclLineError::UnknownKeyword(other.to_owned()))),
            }
        }
        Ok(acl)
    }

    /// Whether `client` may do `access` on `topic` (a topic name for Read and Write, a filter for Subscribe).
    ///
    /// Like Mosquitto, refuses publishing to `$SYS` topics other than `$SYS/broker/connection/+/state` (a bridge's
    /// status) and to `$share` topics, whatever the entries say.
    pub fn check(&self, client: &ClientIdentity<'_>, topic: &str, access: Access) -> bool {
        if access == Access::Write
            && ((topic.starts_with("$SYS") && !topic::matches("$SYS/broker/connection/+/state", topic))
                || topic.starts_with("$share"))
        {
            return false;
        }
        let own = match client.username {
            Some(username) => self.users.get(username).map(Vec::as_slice),
            None => Some(self.anonymous.as_slice()),
        };
        if let Some(decision) =
            own.and_then(|entries| decide(entries.iter().map(|e| (e.grant, e.topic.as_str())), topic, access))
        {
            return decision;
        }
        if dangerous(client.username.unwrap_or("")) || dangerous(client.client_id) {
            return false;
        }
        let substituted: Vec<(Grant, String)> =
            self.patterns.iter().filter_map(|e| Some((e.grant, substitute(&e.topic, client)?))).collect();
        decide(substituted.iter().map(|(grant, t)| (*grant, t.as_str())), topic, access).unwrap_or(false)
    }
}

/// `Some(allowed)` if an entry decides, `None` if none matched. Denials are looked at first.
fn decide<'a>(
    mut entries: impl Iterator<Item = (Grant, &'a str)> + Clone,
    topic: &str,
    access: Access,
) -> Option<bool> {
    let denied = |acl: &str| match access {
        Access::Subscribe => topic::covers(acl, topic),
        Access::Read | Access::Write => topic::matches(acl, topic),
    };
    if entries.clone().any(|(grant, acl)| grant == Grant::Deny && denied(acl)) {
        return Some(false);
    }
    let granted = |acl: &str| match access {
        Access::Subscribe => topic::overlaps(acl, topic),
        Access::Read | Access::Write => topic::matches(acl, topic),
    };
    entries.any(|(grant, acl)| grant.allows(access) && granted(acl)).then_some(true)
}

/// Mosquitto applies no pattern to a client whose username or client id could act as a wildcard.
fn dangerous(name: &str) -> bool {
    name.contains(['+', '#'])
}

/// The pattern with `%c` and `%u` replaced, or `None` if it needs a username the client lacks.
fn substitute(pattern: &str, client: &ClientIdentity<'_>) -> Option<String> {
    let with_user = if pattern.contains("%u") { pattern.replace("%u", client.username?) } else { pattern.to_owned() };
    Some(with_user.replace("%c", client.client_id))
}

/// The first word and the rest, trimmed. Words are separated by spaces or tabs.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (s, ""),
    }
}

fn parse_entry(keyword: &'static str, rest: &str) -> Result<Entry, AclLineError> {
    let (first, after) = split_word(rest);
    let (grant, topic) = match Grant::parse(first) {
        Some(_) if after.is_empty() => return Err(AclLineError::MissingTopic(keyword)),
        Some(grant) => (grant, after),
        None if first.is_empty() => return Err(AclLineError::MissingTopic(keyword)),
        None if !after.is_empty() => return Err(AclLineError::UnknownAccess(first.to_owned())),
        None => (Grant::ReadWrite, first),
    };
    topic::validate_filter(topic).map_err(|why| AclLineError::InvalidTopic(topic.to_owned(), why))?;
    Ok(Entry { grant, topic: topic.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = "\
# Anonymous clients
topic read public/#
topic anon/rw

user alice
topic read sensors/#
topic deny sensors/secret/#
topic readwrite home/alice/#
topic write cmd/+/alice
topic read $SYS/broker/#
topic readwrite with space/x
user bob
topic read #
topic write $SYS/broker/connection/bob/state
topic write $SYS/broker/other
topic readwrite $share/g/x
\tpattern read devices/%c/#
   pattern write devices/%c/state
pattern readwrite users/%u/#
pattern deny users/%u/blocked
pattern read mixed/%u-%c
user alice
topic read extra/#
user carol
topic deny devices/c3/secret
";

    fn acl() -> Acl {
        Acl::parse(ACL, "acl.txt").unwrap()
    }

    #[test]
    fn decisions() {
        use Access::*;
        let acl = acl();
        let anon = ClientIdentity { username: None, client_id: "c0" };
        let alice = ClientIdentity { username: Some("alice"), client_id: "c1" };
        let bob = ClientIdentity { username: Some("bob"), client_id: "c2" };
        let carol = ClientIdentity { username: Some("carol"), client_id: "c3" };
        let dave = ClientIdentity { username: Some("dave"), client_id: "c4" };
        let plus_user = ClientIdentity { username: Some("da+ve"), client_id: "c5" };
        let hash_id = ClientIdentity { username: None, client_id: "c#" };
        #[rustfmt::skip]
        let cases: &[(&ClientIdentity, &str, Access, bool)] = &[
            // Anonymous section applies to clients without a username only.
            (&anon, "public/news", Read, true),
            (&anon, "public/news", Write, false),
            (&anon, "anon/rw", Write, true),
            (&anon, "anon/rw", Read, true),
            (&alice, "public/news", Read, false),
            (&dave, "anon/rw", Write, false),
            // User sections, access words, and sections with the same name adding up.
            (&alice, "sensors/kitchen/temp", Read, true),
            (&alice, "sensors/kitchen/temp", Write, false),
            (&alice, "home/alice/lamp", Write, true),
            (&alice, "cmd/x/alice", Write, true),
            (&alice, "cmd/x/alice", Read, false),
            (&alice, "extra/1", Read, true),
            (&alice, "with space/x", Write, true),
            (&bob, "sensors/kitchen/temp", Read, true),
            (&bob, "sensors/kitchen/temp", Write, false),
            // Deny wins within a section.
            (&alice, "sensors/secret/key", Read, false),
            (&alice, "sensors/secret", Read, false),
            // $ topics: # and + at the first level do not match them; $SYS writes are refused except bridge state.
            (&bob, "$SYS/broker/uptime", Read, false),
            (&alice, "$SYS/broker/uptime", Read, true),
            (&bob, "$SYS/broker/connection/bob/state", Write, true),
            (&bob, "$SYS/broker/other", Write, false),
            (&bob, "$share/g/x", Write, false),
            // Patterns apply to everyone, %c and %u substituted; %u patterns skip anonymous clients.
            (&anon, "devices/c0/temp", Read, true),
            (&anon, "devices/c0/state", Write, true),
            (&anon, "devices/c1/state", Write, false),
            (&dave, "devices/c4/state", Write, true),
            (&dave, "users/dave/x", Write, true),
            (&dave, "users/alice/x", Write, false),
            (&anon, "users//x", Read, false),
            (&anon, "users/%u/x", Read, false),
            (&dave, "mixed/dave-c4", Read, true),
            // Pattern deny beats pattern grant, but a user's own grant beats a pattern deny...
            (&dave, "users/dave/blocked", Read, false),
            (&bob, "users/bob/blocked", Read, true),
            // ...and a user's own deny beats a pattern grant.
            (&carol, "devices/c3/secret", Read, false),
            (&carol, "devices/c3/other", Read, true),
            // No pattern for usernames or client ids that contain wildcards.
            (&plus_user, "devices/c5/x", Read, false),
            (&hash_id, "public/x", Read, true),
            (&hash_id, "devices/c#/x", Read, false),
            // Subscribe: granted when a read grant overlaps the filter, refused when a deny covers it.
            (&alice, "sensors/+/temp", Subscribe, true),
            (&alice, "sensors/#", Subscribe, true),
            (&alice, "sensors", Subscribe, true),
            (&alice, "sensors/secret/#", Subscribe, false),
            (&alice, "sensors/secret/+", Subscribe, false),
            (&alice, "sensors/+/key", Subscribe, true),
            (&alice, "cmd/+/alice", Subscribe, false),
            (&alice, "home/#", Subscribe, true),
            (&alice, "#", Subscribe, true),
            (&alice, "other/#", Subscribe, false),
            (&alice, "$SYS/#", Subscribe, true),
            (&bob, "$SYS/#", Subscribe, false),
            (&bob, "#", Subscribe, true),
            (&anon, "public/+", Subscribe, true),
            (&anon, "devices/c0/#", Subscribe, true),
            (&anon, "devices/+/state", Subscribe, true),
            (&anon, "devices/c9/#", Subscribe, false),
            (&carol, "devices/c3/secret", Subscribe, false),
        ];
        for &(client, topic, access, want) in cases {
            assert_eq!(acl.check(client, topic, access), want, "{client:?} {access:?} {topic}");
        }
    }

    #[test]
    fn empty_acl_refuses_everything() {
        let acl = Acl::parse("# nothing\n\n", "acl.txt").unwrap();
        let anon = ClientIdentity { username: None, client_id: "c" };
        assert!(!acl.check(&anon, "a", Access::Read));
        assert!(!acl.check(&anon, "#", Access::Subscribe));
    }

    #[test]
    fn line_errors() {
        for (text, want) in [
            (
                "topic rw a/b",
                "acl.txt:1: unknown access \"rw\"; use read, write, readwrite or deny (a topic with spaces needs one of them first)",
            ),
            (
                "\n\ntopic READ a",
                "acl.txt:3: unknown access \"READ\"; use read, write, readwrite or deny (a topic with spaces needs one of them first)",
            ),
            (
                "TOPIC read a",
                "acl.txt:1: unknown keyword \"TOPIC\"; lines start with topic, pattern, user or # (a comment)",
            ),
            ("topc a", "acl.txt:1: unknown keyword \"topc\"; lines start with topic, pattern, user or # (a comment)"),
            ("topic", "acl.txt:1: topic line has no topic; write \"topic [read|write|readwrite|deny] TOPIC\""),
            ("topic read  ", "acl.txt:1: topic line has no topic; write \"topic [read|write|readwrite|deny] TOPIC\""),
            (
                "pattern deny",
                "acl.txt:1: pattern line has no topic; write \"pattern [read|write|readwrite|deny] TOPIC\"",
            ),
            ("user", "acl.txt:1: user line has no username; write \"user USERNAME\""),
            ("user  \t ", "acl.txt:1: user line has no username; write \"user USERNAME\""),
            ("topic read a/#/b", "acl.txt:1: invalid topic \"a/#/b\": '#' must be the last level"),
            ("topic read a+/b", "acl.txt:1: invalid topic \"a+/b\": '+' and '#' must fill a whole level"),
        ] {
            assert_eq!(Acl::parse(text, "acl.txt").unwrap_err().to_string(), want, "{text:?}");
        }
    }

    #[test]
    fn whitespace_and_names() {
        let acl = Acl::parse("user  a b  \r\ntopic  read  x y/z  \r\n\t\n  # indented comment\n", "acl.txt").unwrap();
        let ab = ClientIdentity { username: Some("a b"), client_id: "c" };
        assert!(acl.check(&ab, "x y/z", Access::Read));
        assert!(!acl.check(&ab, "x y/z", Access::Write));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(text in "((topic|pattern|user|#)? ?(read|deny|x)? ?[a-z/+#%cu $]{0,12}\n){0,6}",
                                        topic in "[a-z/+#$%]{0,10}") {
            if let Ok(acl) = Acl::parse(&text, "acl.txt") {
                for access in [Access::Read, Access::Write, Access::Subscribe] {
                    for username in [None, Some("u")] {
                        let _ = acl.check(&ClientIdentity { username, client_id: "c" }, &topic, access);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = Acl::parse(&text, "acl.txt");
        }
    }
}
