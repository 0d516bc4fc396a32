//! Running the binary: configuration errors, probes, graceful shutdown.

use std::process::Command;

use skein_codec::*;

use crate::support::*;

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(skein_bin()).arg("serve").args(args).output().expect("runs")
}

#[test]
fn a_bad_flag_stops_start_up_and_names_it() {
    let out = serve(&["--max-queud-messages", "5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-queud-messages"), "{err}");
    assert!(err.contains("--max-queued-messages"), "clap suggests the right one: {err}");
    let out = serve(&["--max-inflight-messages", "many"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("many"));
    // A negative number is named as the flag's bad value, not taken for an unknown flag.
    let out = serve(&["--sys-interval", "-1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value '-1' for '--sys-interval"), "{err}");
}

#[test]
fn a_cluster_listening_on_every_address_must_say_where_peers_reach_it() {
    let out = serve(&["--cluster", "0.0.0.0:7946", "--join", "10.0.0.1:7946"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0:7946") && err.contains("--cluster-advertise"), "{err}");
}

#[test]
fn a_seed_list_naming_this_node_otherwise_than_it_advertises_itself_is_reported() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // The list names this node as `localhost`; it advertises `127.0.0.1`: it can never count itself as that seed.
    let join = format!("localhost:{port},127.0.0.1:{}", free_port());
    let node = Skein::start(&["--node-id", "1", "--cluster", &listen, "--join", &join]);
    let line = node.wait_log("answers with this node's id");
    assert!(line.contains(&format!("seed=localhost:{port}")) && line.contains("--cluster-advertise"), "{line}");
}

#[test]
fn a_bad_config_key_names_the_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("skein.toml");
    std::fs::write(&file, "# comment\nmax_queued_messages = 10\nallow_anonymus = true\n").unwrap();
    let out = serve(&["--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("allow_anonymus"), "{err}");
    assert!(err.contains("--help"), "says where the keys are listed: {err}");
}

#[test]
fn config_file_environment_and_flags_are_one_schema() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("skein.toml");
    std::fs::write(&file, "max_keepalive = 10\nmax_connections = 5\nallow_anonymous = true\n").unwrap();
    // The file says 10, the environment 20: the environment wins; the file's other key stays.
    let out = Command::new(skein_bin())
        .args(["serve", "--config", file.to_str().unwrap(), "--mqtt", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SKEIN_MAX_KEEPALIVE", "20")
        .env("SKEIN_MAX_CONNECTIONS", "-7")
        .output()
        .unwrap();
    assert!(!out.status.success(), "max_connections -7 from the environment is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_connections"));
    let broker = Skein::start(&["--config", file.to_str().unwrap(), "--max-keepalive", "25"]);
    let mut c = connect_packet(ProtocolVersion::V5, "k", true);
    c.keep_alive = 100;
    let (_, ack) = Raw::connect(broker.mqtt, c);
    assert_eq!(ack.properties.server_keep_alive, Some(25), "the flag beats the file");
}

#[test]
fn the_data_dir_is_locked_by_one_broker() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Skein::start_in(dir.path(), &[]);
    let out = Command::new(skein_bin())
        .args(["serve", "--mqtt", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another skein"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn health_and_readiness_probes() {
    let broker = Skein::start(&["--http", "127.0.0.1:0"]);
    let http = broker.http.unwrap();
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(http, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(http_get(http, "/nope").map(|r| r.0), Some(404));
    assert_eq!(http_get(http, "/cluster").map(|r| r.0), Some(404), "not clustered");
}

#[test]
fn sigterm_closes_clients_with_a_reason_and_exits_cleanly() {
    let mut broker = Skein::start(&[]);
    let (mut v5, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "v5", true));
    let (mut v3, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "v3", true));
    assert_eq!(broker.stop(), Some(0));
    assert_eq!(v5.recv_until_closed(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown))]);
    assert_eq!(v3.recv_until_closed(), vec![]);
    assert!(broker.log().contains("stopped"));
}
