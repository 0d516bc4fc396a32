//! MQTT over WebSocket: MQTT.js (as a browser would use it) over `ws://` and `wss://`, and the handshake's rules.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::support::*;

/// The port of the broker's WebSocket listener (`tls`: the secure one).
fn ws_port(broker: &Skein, tls: bool) -> String {
    let line = broker.wait_log(&format!("tls={tls}"));
    let local = line.split("local=").nth(1).and_then(|r| r.split_whitespace().next()).expect("local address");
    local.rsplit(':').next().unwrap().to_string()
}

fn mqttjs(url: &str, version: u8, ca: Option<&str>) -> serde_json::Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let mut cmd = Command::new("node");
    cmd.current_dir(dir).arg("mqttjs_ws.js").arg(url).arg(version.to_string()).args(ca);
    let out = Proc::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped())).wait_output(WAIT * 2);
    assert!(out.status.success(), "MQTT.js over {url}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

fn expected() -> serde_json::Value {
    serde_json::json!([
        {"topic": "ws/q0", "payload": "over websocket 0", "qos": 0},
        {"topic": "ws/q1", "payload": "over websocket 1", "qos": 1},
        {"topic": "ws/q2", "payload": "over websocket 2", "qos": 2},
    ])
}

#[test]
fn mqtt_js_over_ws_and_wss() {
    let pki = TestPki::new("skein test CA");
    let (cert, key) = (pki.path("node.pem"), pki.path("node.key"));
    let broker = Skein::start(&["--ws", "127.0.0.1:0", "--wss", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key]);
    let (ws, wss) = (ws_port(&broker, false), ws_port(&broker, true));
    for version in [4u8, 5] {
        assert_eq!(mqttjs(&format!("ws://127.0.0.1:{ws}/mqtt"), version, None), expected(), "ws, v{version}");
        let ca = pki.path("ca.pem");
        assert_eq!(mqttjs(&format!("wss://127.0.0.1:{wss}/mqtt"), version, Some(&ca)), expected(), "wss");
    }
}

/// The raw HTTP answer to an upgrade request on `path` offering `protocol`: its status line and headers.
fn upgrade(port: &str, path: &str, protocol: &str) -> Vec<String> {
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    )
    .unwrap();
    BufReader::new(s).lines().map_while(Result::ok).take_while(|l| !l.is_empty()).collect()
}

#[test]
fn the_handshake_wants_path_mqtt_and_selects_the_mqtt_subprotocol() {
    let broker = Skein::start(&["--ws", "127.0.0.1:0"]);
    let port = ws_port(&broker, false);
    let ok = upgrade(&port, "/mqtt", "mqttv3.1, mqtt");
    assert!(ok[0].starts_with("HTTP/1.1 101"), "{ok:?}");
    assert!(ok.iter().any(|h| h.eq_ignore_ascii_case("sec-websocket-protocol: mqtt")), "mqtt preferred: {ok:?}");
    assert!(upgrade(&port, "/other", "mqtt")[0].starts_with("HTTP/1.1 404"));
    assert!(upgrade(&port, "/mqtt", "chat")[0].starts_with("HTTP/1.1 400"));
}
