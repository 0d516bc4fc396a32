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

/// Writes `payload` as one masked binary frame, as a client must.
fn send_frame(s: &mut std::net::TcpStream, payload: &[u8]) {
    let mut frame = vec![0x82u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
}

/// The payload of the server's next frame (small ones only: the acknowledgements here).
fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x82, "a binary frame");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7F)];
    s.read_exact(&mut payload).unwrap();
    payload
}

/// A PUBLISH over 16 MiB sent as one frame (as MQTT.js sends each packet) is taken: the WebSocket frame and message
/// limits follow the broker's maximum packet size. The library's own 16 MiB frame limit reset the connection.
#[test]
fn a_publish_over_16_mib_in_one_frame_is_taken() {
    use skein_codec::*;
    let broker = Skein::start(&["--ws", "127.0.0.1:0"]);
    let port = ws_port(&broker, false);
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 101 "), "{status}");
    // The headers, up to the empty line; nothing of the frames can have come before the client's first one.
    for line in reader.lines().map_while(Result::ok) {
        if line.is_empty() {
            break;
        }
    }
    let encode = |p: Packet| {
        let mut buf = bytes::BytesMut::new();
        p.encode(ProtocolVersion::V311, &mut buf).unwrap();
        buf.to_vec()
    };
    send_frame(&mut s, &encode(Packet::Connect(Box::new(connect_packet(ProtocolVersion::V311, "ws-big", true)))));
    assert_eq!(read_frame(&mut s), [0x20, 2, 0, 0], "CONNACK");
    let big = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "ws/big".into(),
        packet_id: 1,
        properties: Properties::default(),
        payload: bytes::Bytes::from(vec![b'x'; 17 * 1024 * 1024]),
    });
    send_frame(&mut s, &encode(big));
    assert_eq!(read_frame(&mut s), [0x40, 2, 0, 1], "PUBACK");
}
