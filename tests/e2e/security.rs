//! Mosquitto's security settings: password files written by the real `mosquitto_passwd` (and by `skein passwd`,
//! read by the real Mosquitto), `allow_anonymous`, ACL files, and their reload on SIGHUP.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skein_codec::*;

use crate::support::*;

fn mosquitto_passwd(args: &[&str]) {
    let out = Command::new("mosquitto_passwd").args(args).output().expect("mosquitto_passwd (package mosquitto)");
    assert!(out.status.success(), "mosquitto_passwd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A password file the way the seed makes one, plus a `$6$` (SHA-512) user as Mosquitto 1.6 wrote them.
fn password_file(dir: &Path) -> String {
    let file = dir.join("passwd").to_string_lossy().into_owned();
    mosquitto_passwd(&["-c", "-b", &file, "dave", "password"]);
    mosquitto_passwd(&["-H", "sha512", "-b", &file, "erin", "erin's secret"]);
    file
}

/// `mosquitto_pub` with extra arguments: its exit status and stderr.
fn try_pub(broker: &Skein, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn connect_as(version: ProtocolVersion, id: &str, user: Option<&str>, password: Option<&[u8]>) -> Connect {
    let mut c = connect_packet(version, id, true);
    c.username = user.map(Into::into);
    c.password = password.map(Bytes::copy_from_slice);
    c
}

/// A byte-level client that keeps deliveries arriving while it waits for an acknowledgement.
struct Client {
    raw: Raw,
    delivered: std::collections::VecDeque<String>,
}

impl Client {
    /// The next packet that is not a delivery; deliveries are acknowledged and kept for `next_topic`.
    fn reply(&mut self) -> Packet {
        loop {
            match self.raw.recv() {
                Some(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.raw.send(&Packet::PubAck(Ack::new(p.packet_id)));
                    }
                    self.delivered.push_back(p.topic.to_string());
                }
                Some(other) => return other,
                None => panic!("connection closed"),
            }
        }
    }

    fn subscribe(&mut self, filter: &str) -> ReasonCode {
        self.raw.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(filter.into(), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() })],
        }));
        match self.reply() {
            Packet::SubAck(a) => a.reason_codes[0],
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    fn publish(&mut self, topic: &str, id: u16) -> ReasonCode {
        self.raw.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: id,
            properties: Properties::default(),
            payload: Bytes::from_static(b"m"),
        }));
        match self.reply() {
            Packet::PubAck(a) => a.reason_code,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    fn next_topic(&mut self) -> String {
        if let Some(topic) = self.delivered.pop_front() {
            return topic;
        }
        match self.raw.recv() {
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    self.raw.send(&Packet::PubAck(Ack::new(p.packet_id)));
                }
                p.topic.to_string()
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

fn login(broker: &Skein, v: ProtocolVersion, id: &str, user: &str, pw: &[u8]) -> Client {
    let (raw, ack) = Raw::connect(broker.mqtt, connect_as(v, id, Some(user), Some(pw)));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    Client { raw, delivered: Default::default() }
}

#[test]
fn the_seeds_password_walk_through_with_a_file_from_mosquitto_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path());
    // A listener and a password file, allow_anonymous left unset: anonymous clients are refused, as in Mosquitto 2.0.
    let broker = Skein::start(&["--password-file", &file]);
    let (sub, out) = mosquitto_sub(&broker, &["-t", "test", "-u", "dave", "-P", "password", "-C", "2"]);
    mosquitto_pub(&broker, &["-t", "test", "-m", "message from mosquitto_pub client", "-u", "dave", "-P", "password"]);
    mosquitto_pub(&broker, &["-t", "test", "-m", "from erin", "-u", "erin", "-P", "erin's secret"]);
    out.wait_messages(2);
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), ["message from mosquitto_pub client", "from erin"]);

    for args in [&["-u", "dave", "-P", "wrong"][..], &["-u", "mallory", "-P", "password"], &[]] {
        let (code, err) = try_pub(&broker, &[&["-t", "test", "-m", "x"], args].concat());
        assert_ne!(code, Some(0), "{args:?} must be refused");
        assert!(err.contains("not authorised"), "3.1.1 return code 5, as from Mosquitto: {err}");
    }
    // MQTT 5.0 says which: bad user name or password (0x86), or not authorized for an anonymous client (0x87).
    let started = Instant::now();
    let (_, ack) = Raw::connect(broker.mqtt, connect_as(ProtocolVersion::V5, "v5", Some("dave"), Some(b"nope")));
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    assert!(started.elapsed() >= Duration::from_millis(500), "a failed login is answered late");
    let (_, ack) = Raw::connect(broker.mqtt, connect_as(ProtocolVersion::V5, "v5", None, None));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    let (_, ack) = Raw::connect(broker.mqtt, connect_as(ProtocolVersion::V5, "v5", Some("dave"), Some(b"password")));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    broker.wait_log("failures=5");
}

/// The seed's two lines, in a Mosquitto-format file under `conf.d/`, included the way Debian's mosquitto.conf does.
#[test]
fn the_seeds_mosquitto_configuration_lines_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path());
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    std::fs::write(conf_d.join("default.conf"), format!("allow_anonymous false\npassword_file {file}\n")).unwrap();
    let main = dir.path().join("mosquitto.conf");
    std::fs::write(&main, format!("pid_file /run/mosquitto/mosquitto.pid\ninclude_dir {}\n", conf_d.display()))
        .unwrap();
    let broker = Skein::start(&["-c", main.to_str().unwrap()]); // as `mosquitto -c`
    let (sub, out) = mosquitto_sub(&broker, &["-t", "test", "-u", "dave", "-P", "password", "-C", "1"]);
    mosquitto_pub(&broker, &["-t", "test", "-m", "message from mosquitto_pub client", "-u", "dave", "-P", "password"]);
    out.wait_for(|l| l == "message from mosquitto_pub client");
    sub.wait_output(WAIT);
    assert_ne!(try_pub(&broker, &["-t", "test", "-m", "anonymous"]).0, Some(0), "allow_anonymous false holds");
}

#[test]
fn allow_anonymous_true_beside_a_password_file_still_checks_user_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path());
    let broker = Skein::start(&["--password-file", &file, "--allow-anonymous", "true"]);
    assert_eq!(try_pub(&broker, &["-t", "t", "-m", "anonymous"]).0, Some(0));
    assert_ne!(try_pub(&broker, &["-t", "t", "-m", "x", "-u", "dave", "-P", "wrong"]).0, Some(0));
}

#[test]
fn a_file_from_skein_passwd_works_in_mosquitto_itself() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let passwd = |args: &[&str]| {
        let out = Command::new(skein_bin()).arg("passwd").args(args).output().unwrap();
        assert!(out.status.success(), "skein passwd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let f = file.to_str().unwrap();
    passwd(&["-c", "-b", f, "dave", "password"]);
    passwd(&["-b", f, "gone", "x"]);
    passwd(&["-D", f, "gone"]);
    // Interactive mode reads the password twice; from a pipe here.
    let mut child = Command::new(skein_bin())
        .args(["passwd", f, "erin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"typed twice\ntyped twice\n").unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("dave:$7$101$") && text.contains("\nerin:$7$") && !text.contains("gone"), "{text}");

    // The real Mosquitto broker, run by hand on a free port, accepts it.
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    let user = if unsafe_is_root() { "user root\n" } else { "" };
    std::fs::write(
        &conf,
        format!("{user}listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n", file.display()),
    )
    .unwrap();
    let _mosquitto = Proc::spawn(Command::new("mosquitto").arg("-c").arg(&conf).stderr(Stdio::null()));
    let answers = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let deadline = Instant::now() + WAIT;
    while !answers() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = |u: &str, p: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "t", "-m", "m", "-u", u, "-P", p])
            .status()
            .unwrap()
            .success()
    };
    assert!(run("dave", "password") && run("erin", "typed twice"), "Mosquitto accepts our hashes");
    assert!(!run("dave", "wrong"));
}

/// Root runs Mosquitto only with `user root` in its configuration.
fn unsafe_is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

const ACL: &str = "\
# nothing for anonymous clients
user dave
topic readwrite dave/#
topic read public/#

user erin
topic write public/#

pattern readwrite clients/%c/#
";

/// A broker with the password file and `ACL` in `dir`; and the ACL file's path.
fn with_acl(dir: &Path) -> (Skein, std::path::PathBuf) {
    let file = password_file(dir);
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    (Skein::start(&["--password-file", &file, "--acl-file", acl.to_str().unwrap()]), acl)
}

#[test]
fn the_acl_file_governs_publish_subscribe_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = with_acl(dir.path());
    let mut dave = login(&broker, ProtocolVersion::V5, "dave-1", "dave", b"password");
    assert_eq!(dave.subscribe("public/#"), ReasonCode::GrantedQoS1);
    assert_eq!(dave.subscribe("dave/#"), ReasonCode::GrantedQoS1);
    // No read grant overlaps erin's topics: refused (0x87; 3.x clients see 0x80).
    assert_eq!(dave.subscribe("erin/#"), ReasonCode::NotAuthorized);
    let mut dave3 = login(&broker, ProtocolVersion::V311, "dave-3", "dave", b"password");
    assert_eq!(dave3.subscribe("erin/#"), ReasonCode::UnspecifiedError, "3.1.1 SUBACK failure 0x80");

    // erin may write public/#, dave may not: v5 hears 0x87, v3 is acknowledged and dropped, as with Mosquitto.
    let mut erin = login(&broker, ProtocolVersion::V5, "erin-1", "erin", b"erin's secret");
    assert_eq!(erin.publish("public/news", 1), ReasonCode::Success);
    assert_eq!(dave.next_topic(), "public/news");
    assert_eq!(dave.publish("public/forged", 2), ReasonCode::NotAuthorized);
    assert_eq!(dave3.publish("public/forged", 1), ReasonCode::Success);
    assert_eq!(dave.publish("dave/marker", 3), ReasonCode::Success);
    assert_eq!(dave.next_topic(), "dave/marker", "neither forged message was delivered");

    // A pattern with %c: each client its own branch.
    assert_eq!(erin.publish("clients/erin-1/state", 2), ReasonCode::NoMatchingSubscribers, "allowed, unheard");
    assert_eq!(erin.publish("clients/someone-else/state", 3), ReasonCode::NotAuthorized);
    // Writing is not reading: erin may not subscribe to what it publishes, except its own branch.
    assert_eq!(erin.subscribe("public/#"), ReasonCode::NotAuthorized);
    assert_eq!(erin.subscribe("clients/erin-1/#"), ReasonCode::GrantedQoS1);
    // Anonymous clients are not even let in (allow_anonymous unset beside a password file).
    let (_, ack) = Raw::connect(broker.mqtt, connect_as(ProtocolVersion::V5, "anon", None, None));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
}

#[test]
fn sighup_reloads_the_acl_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, acl) = with_acl(dir.path());
    let mut dave = login(&broker, ProtocolVersion::V5, "dave", "dave", b"password");
    let mut erin = login(&broker, ProtocolVersion::V5, "erin", "erin", b"erin's secret");
    assert_eq!(dave.subscribe("public/#"), ReasonCode::GrantedQoS1);
    assert_eq!(dave.subscribe("dave/#"), ReasonCode::GrantedQoS1);
    assert_eq!(dave.subscribe("news/#"), ReasonCode::NotAuthorized);

    // dave loses public/#, gains news/#; erin may write news/#.
    std::fs::write(&acl, ACL.replace("topic read public/#", "topic read news/#") + "user erin\ntopic write news/#\n")
        .unwrap();
    let hup = Command::new("kill").args(["-HUP", &broker.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    broker.wait_log("password and ACL files reloaded");

    assert_eq!(dave.subscribe("news/#"), ReasonCode::GrantedQoS1, "the same connection, the new rules");
    // dave's subscription to public/# is still there, but the ACL no longer lets it read: nobody gets this.
    assert_eq!(erin.publish("public/old", 1), ReasonCode::NoMatchingSubscribers);
    assert_eq!(erin.publish("news/new", 2), ReasonCode::Success);
    assert_eq!(dave.next_topic(), "news/new", "public/# was subscribed before, but is not readable any more");

    // A broken file is refused and the rules in force stay.
    std::fs::write(&acl, "topic sometimes x\n").unwrap();
    Command::new("kill").args(["-HUP", &broker.pid().to_string()]).status().unwrap();
    let line = broker.wait_log("reload failed");
    assert!(line.contains(":1:"), "names the line: {line}");
    assert_eq!(erin.publish("news/still", 3), ReasonCode::Success);
    assert_eq!(dave.next_topic(), "news/still");
}

#[test]
fn a_missing_or_broken_file_stops_start_up_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user dave\ntopic rw dave/#\n").unwrap();
    for (flag, path, want) in [
        ("--password-file", dir.path().join("none").to_string_lossy().into_owned(), "none"),
        ("--acl-file", acl.to_string_lossy().into_owned(), "acl:2:"),
    ] {
        let out = Command::new(skein_bin())
            .args(["serve", "--mqtt", "127.0.0.1:0", "--persistence", "false", flag, &path])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{flag}: {err}");
    }
}

/// `-H argon2id` is an opt-in Mosquitto 2.0 cannot read; Skein reads it beside `$7$` lines in the same file.
#[test]
fn argon2id_hashes_from_skein_passwd_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = file.to_str().unwrap();
    for args in [&["-c", "-b", "-H", "argon2id", f, "dave", "password"][..], &["-b", f, "erin", "pbkdf2 one"]] {
        let out = Command::new(skein_bin()).arg("passwd").args(args).output().unwrap();
        assert!(out.status.success(), "skein passwd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("dave:$argon2id$v=19$m=19456,t=2,p=1$") && text.contains("\nerin:$7$101$"), "{text}");
    let broker = Skein::start(&["--password-file", f]);
    let port = broker.port().to_string();
    let run = |u: &str, p: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "m", "-u", u, "-P", p])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(run("dave", "password") && run("erin", "pbkdf2 one"));
    assert!(!run("dave", "wrong"), "a wrong password is refused");
}

/// A will is a publish the client makes later: as Mosquitto, one the ACL would refuse refuses the connection (3.1.1
/// return code 5, 5.0 reason 0x87), rather than being sent when the client goes (or dropped where nobody sees it).
#[test]
fn a_will_the_acl_refuses_refuses_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = with_acl(dir.path());
    let mut watcher = login(&broker, ProtocolVersion::V5, "dave-watch", "dave", b"password");
    assert_eq!(watcher.subscribe("dave/#"), ReasonCode::GrantedQoS1);

    let with_will = |topic: &str| {
        let mut c = connect_as(ProtocolVersion::V5, "dave-will", Some("dave"), Some(b"password"));
        c.will = Some(Will {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
        c
    };
    let (_, ack) = Raw::connect(broker.mqtt, with_will("public/forged"));
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "dave may not write public/#");
    // The real client, 3.1.1: refused, and says why.
    let (code, stderr) = try_pub(
        &broker,
        &[
            "-u",
            "dave",
            "-P",
            "password",
            "--will-topic",
            "public/forged",
            "--will-payload",
            "x",
            "-t",
            "dave/a",
            "-m",
            "m",
        ],
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.to_lowercase().contains("not authori"), "{stderr}");

    // A will the ACL allows is let in, and sent when the client goes without DISCONNECT.
    let (raw, ack) = Raw::connect(broker.mqtt, with_will("dave/will"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    drop(raw);
    assert_eq!(watcher.next_topic(), "dave/will");
}

/// `$SYS` and `$share` topics are the server's: a client's publish there is refused whatever the ACL says (no ACL
/// here at all), so nobody can plant a retained `$SYS/broker/version`, as with Mosquitto.
#[test]
fn clients_cannot_publish_on_sys_or_share_topics() {
    let broker = Skein::start(&["--allow-anonymous", "true"]);
    let (raw, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "forger", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let mut forger = Client { raw, delivered: Default::default() };
    assert_eq!(forger.publish("$SYS/broker/version", 1), ReasonCode::NotAuthorized);
    assert_eq!(forger.publish("$share/g/t", 2), ReasonCode::NotAuthorized);
    assert_eq!(forger.publish("sys/ok", 3), ReasonCode::NoMatchingSubscribers, "other topics as usual");

    // The real client, 3.1.1, retained: acknowledged and dropped; subscribers see the broker's own value.
    mosquitto_pub(&broker, &["-r", "-q", "1", "-t", "$SYS/broker/version", "-m", "forged"]);
    let (sub, out) = mosquitto_sub(&broker, &["-t", "$SYS/broker/version", "-C", "1"]);
    let got = out.wait_messages(1);
    sub.wait_output(Duration::from_secs(10));
    assert!(got[0].starts_with("skein "), "{got:?}");
}
