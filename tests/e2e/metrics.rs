//! `GET /metrics`: Prometheus' own `promtool` accepts what a node exports, the figures follow what real clients
//! did, and a cluster node adds its cluster figures. (`scripts/check-deploy` checks that every metric the
//! dashboard and alert rules in `deploy/` use is exported, with a real Prometheus scraping a node.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use skein_codec::*;

use crate::support::*;

/// One scrape: the text, after `promtool check metrics` accepted it.
fn scrape(http: std::net::SocketAddr) -> String {
    let (code, body) = http_get(http, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    body
}

/// Sample name (with its labels, as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The metric names a scrape declares (its `# TYPE` lines).
fn names(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next().map(String::from)).collect()
}

fn value(text: &str, name: &str) -> f64 {
    *samples(text).get(name).unwrap_or_else(|| panic!("{name} not in the scrape:\n{text}"))
}

/// Scrapes until `pred` holds for the value of `name` (figures are read live, so they settle a moment after the
/// clients' own acknowledgements).
fn wait_value(http: std::net::SocketAddr, name: &str, pred: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(http);
        if pred(value(&text, name)) {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} never reached the value wanted:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_node_exports_what_its_clients_did_in_a_format_promtool_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd").to_string_lossy().into_owned();
    let made = Command::new(skein_bin()).args(["passwd", "-c", "-b", &passwd, "dave", "password"]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // No $SYS topics: they are retained messages and publishes of their own.
    let broker = Skein::start(&["--http", "127.0.0.1:0", "--password-file", &passwd, "--sys-interval", "0"]);
    let http = broker.http.unwrap();

    let before = scrape(http);
    assert_eq!(value(&before, "skein_ready"), 1.0);
    assert_eq!(value(&before, "skein_clients_connected"), 0.0);
    assert_eq!(value(&before, &format!("skein_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    assert!(value(&before, "process_resident_memory_bytes") > 0.0);
    assert!(value(&before, "process_open_fds") >= 1.0);
    assert!(!names(&before).iter().any(|n| n.starts_with("skein_cluster_")), "not clustered:\n{before}");

    let (_sub, log) = mosquitto_sub(&broker, &["-t", "metrics/#", "-q", "1", "-u", "dave", "-P", "password", "-v"]);
    wait_value(http, "skein_subscriptions", |v| v == 1.0);
    for i in 0..3 {
        mosquitto_pub(&broker, &["-t", "metrics/t", "-q", "1", "-m", &format!("m{i}"), "-u", "dave", "-P", "password"]);
    }
    mosquitto_pub(&broker, &["-t", "metrics/kept", "-r", "-m", "kept", "-u", "dave", "-P", "password"]);
    log.wait_messages(4);
    // A client with a wrong password is refused, and counted twice: refused, and for its credentials.
    let (_, ack) = Raw::connect(broker.mqtt, {
        let mut c = connect_packet(ProtocolVersion::V311, "intruder", true);
        c.username = Some("dave".into());
        c.password = Some(Bytes::from_static(b"wrong"));
        c
    });
    assert_ne!(ack.reason_code, ReasonCode::Success);

    let after = wait_value(http, "skein_auth_failures_total", |v| v == 1.0);
    assert_eq!(value(&after, "skein_connections_refused_total"), 1.0);
    assert_eq!(value(&after, "skein_clients_connected"), 1.0, "the subscriber is still connected");
    assert_eq!(value(&after, "skein_connections_total"), 5.0, "one subscriber and four publishers");
    assert_eq!(value(&after, "skein_publish_received_total"), 4.0);
    assert_eq!(value(&after, "skein_publish_sent_total"), 4.0);
    // "m0", "m1", "m2" and "kept", in and out.
    assert_eq!(value(&after, "skein_publish_bytes_received_total"), 10.0);
    assert_eq!(value(&after, "skein_publish_bytes_sent_total"), 10.0);
    assert_eq!(value(&after, "skein_retained_messages"), 1.0);
    assert_eq!(value(&after, "skein_sessions"), 1.0);
    assert!(value(&after, "skein_packets_received_total") >= 4.0 + 5.0 + 1.0, "PUBLISH, CONNECT, SUBSCRIBE at least");
    assert!(value(&after, "skein_bytes_received_total") > value(&before, "skein_bytes_received_total"));
    assert!(value(&after, "skein_bytes_sent_total") > 0.0);
    assert!(value(&after, "process_cpu_seconds_total") > 0.0);
}

/// The packet counters count every packet, as Mosquitto's `$SYS/broker/messages/*` do: the CONNECT and CONNACK,
/// pings and their answers, the SUBACK; and the bytes counter the CONNACK's bytes too.
#[test]
fn packet_counters_count_every_type() {
    let broker = Skein::start(&["--http", "127.0.0.1:0", "--sys-interval", "0"]);
    let http = broker.http.unwrap();
    let before = scrape(http);
    let (mut raw, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "counted", true));
    for _ in 0..3 {
        raw.send(&Packet::PingReq);
        assert_eq!(raw.recv(), Some(Packet::PingResp));
    }
    raw.send(&sub_packet(1, &[("counted/#", QoS::AtMostOnce)]));
    assert!(matches!(raw.recv(), Some(Packet::SubAck(_))));
    raw.send(&Packet::Disconnect(Disconnect::default()));
    let after = wait_value(http, "skein_clients_connected", |v| v == 0.0);
    let grew = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(grew("skein_packets_received_total"), 6.0, "CONNECT, 3 PINGREQ, SUBSCRIBE, DISCONNECT");
    assert_eq!(grew("skein_packets_sent_total"), 5.0, "CONNACK, 3 PINGRESP, SUBACK");
    assert_eq!(grew("skein_bytes_sent_total"), 4.0 + 3.0 * 2.0 + 5.0, "CONNACK 4, PINGRESP 2 each, SUBACK 5");
}

#[test]
fn cluster_nodes_export_their_view_of_the_cluster() {
    let nodes = Nodes::start(3);
    let http = |i: usize| nodes.nodes[i].http.unwrap();
    let (_sub, log) = mosquitto_sub(&nodes.nodes[1], &["-t", "metrics/cross", "-q", "1"]);
    nodes.wait_routes(0, 1);
    mosquitto_pub(&nodes.nodes[0], &["-t", "metrics/cross", "-q", "1", "-m", "over"]);
    log.wait_messages(1);

    let scrapes: Vec<String> = (0..3).map(|i| wait_value(http(i), "skein_cluster_has_leader", |v| v == 1.0)).collect();
    for (i, text) in scrapes.iter().enumerate() {
        assert_eq!(value(text, "skein_cluster_node_id"), (i + 1) as f64);
        assert_eq!(value(text, "skein_cluster_members"), 3.0);
        assert_eq!(value(text, "skein_cluster_voters"), 3.0);
        assert!(value(text, "skein_cluster_term") >= 1.0);
        assert!(value(text, "skein_cluster_applied_index") >= 1.0);
        assert_eq!(value(text, "skein_ready"), 1.0);
    }
    let leaders: f64 = scrapes.iter().map(|t| value(t, "skein_cluster_is_leader")).sum();
    assert_eq!(leaders, 1.0, "one leader");
    let from = wait_value(http(0), "skein_cluster_forwarded_total", |v| v == 1.0);
    assert!(value(&from, "skein_cluster_forward_batches_total") >= 1.0);
    assert_eq!(value(&from, "skein_cluster_forward_failures_total"), 0.0);
    assert_eq!(value(&from, "skein_cluster_routes"), 1.0);
    for text in &scrapes {
        assert_eq!(value(text, "skein_cluster_duplicates_skipped_total"), 0.0, "no session moved");
    }
}
