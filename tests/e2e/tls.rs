//! MQTT over TLS (rustls): mosquitto clients with `--cafile`, mutual TLS with `--cert/--key` and the certificate's
//! Common Name as user name, paho-mqtt over TLS, and certificates replaced on disk while the broker runs.

use std::process::Command;

use crate::support::*;

/// Starts a broker with a TLS listener (and the usual plain one); returns it and the TLS port.
fn tls_broker(pki: &TestPki, extra: &[&str]) -> (Skein, String) {
    let (cert, key) = (pki.path("node.pem"), pki.path("node.key"));
    let mut args = vec!["--mqtts", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    let broker = Skein::start(&args);
    let line = broker.wait_log("listening for MQTT over TLS");
    let local = line.split("local=").nth(1).and_then(|r| r.split_whitespace().next()).expect("local address");
    let port = local.rsplit(':').next().unwrap().to_string();
    (broker, port)
}

/// mosquitto_pub over TLS: its exit status and stderr.
fn tls_pub(port: &str, args: &[&str]) -> (bool, String) {
    let out =
        Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", port, "-q", "1"]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// mosquitto_sub over TLS, started and subscribed (its `-d` output shows the SUBACK).
fn tls_sub(port: &str, args: &[&str]) -> (Proc, std::sync::Arc<Log2>) {
    let (p, log) = mosquitto_sub_on(port, args);
    log.wait_for(|l| l.contains("received SUBACK"));
    (p, log)
}

#[test]
fn mosquitto_clients_over_tls_with_the_ca_file() {
    let pki = TestPki::new("skein test CA");
    let (_broker, port) = tls_broker(&pki, &[]);
    let ca = pki.path("ca.pem");
    let (sub, out) = tls_sub(&port, &["--cafile", &ca, "-t", "tls/#", "-v", "-C", "1"]);
    let (ok, err) = tls_pub(&port, &["--cafile", &ca, "-t", "tls/x", "-m", "over TLS"]);
    assert!(ok, "{err}");
    out.wait_for(|l| l == "tls/x over TLS");
    sub.wait_output(WAIT);
    // A client that does not trust the certificate gets nowhere. (TLS below 1.2 is not in rustls at all.)
    assert!(!tls_pub(&port, &["--cafile", &TestPki::new("another CA").path("ca.pem"), "-t", "t", "-m", "x"]).0);
}

/// Payloads of `SPLICE_MIN` (8 KiB) and more go out by vectored writes from where they are: over TLS and plain TCP,
/// between small ones, each arrives whole and in order.
#[test]
fn large_and_small_messages_arrive_whole_and_in_order_over_tls_and_tcp() {
    let pki = TestPki::new("skein test CA");
    let ca = pki.path("ca.pem");
    let (broker, port) = tls_broker(&pki, &[]);
    let dir = tempfile::tempdir().unwrap();
    let sizes = [10usize, 8 * 1024, 3, 200_000, 8 * 1024 - 1, 70_000];
    let bodies: Vec<String> =
        sizes.iter().enumerate().map(|(i, n)| char::from(b'a' + i as u8).to_string().repeat(*n)).collect();
    for plain in [false, true] {
        let p = if plain { broker.port().to_string() } else { port.clone() };
        let tls: &[&str] = if plain { &[] } else { &["--cafile", &ca] };
        let count = sizes.len().to_string();
        let (sub, out) = tls_sub(&p, &[tls, &["-t", "big/#", "-q", "1", "-C", &count]].concat());
        for (i, body) in bodies.iter().enumerate() {
            let file = dir.path().join(format!("m{i}"));
            std::fs::write(&file, body).unwrap();
            let (ok, err) = tls_pub(&p, &[tls, &["-t", "big/x", "-f", file.to_str().unwrap()]].concat());
            assert!(ok, "{err}");
        }
        sub.wait_output(WAIT);
        assert_eq!(out.final_messages(), bodies, "plain TCP: {plain}");
    }
}

/// Mosquitto's `tls_version`: the lowest version taken. `openssl s_client -tls1_2` offers TLS 1.2 alone (a client's
/// own `--tls-version` is its lowest, so mosquitto_pub would go up to 1.3).
#[test]
fn tls_version_sets_the_lowest_version_taken() {
    let pki = TestPki::new("skein test CA");
    let ca = pki.path("ca.pem");
    let handshake = |port: &str, version: &str| {
        Command::new("openssl")
            .args(["s_client", version, "-CAfile", &ca, "-connect", &format!("127.0.0.1:{port}")])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    let (_default, port) = tls_broker(&pki, &[]);
    assert!(handshake(&port, "-tls1_2") && handshake(&port, "-tls1_3"), "1.2 and 1.3 by default");
    let (_strict, port) = tls_broker(&pki, &["--tls-version", "tlsv1.3"]);
    assert!(handshake(&port, "-tls1_3"));
    assert!(!handshake(&port, "-tls1_2"), "TLS 1.2 refused");
    let (ok, err) = tls_pub(&port, &["--cafile", &ca, "-t", "v/x", "-m", "over 1.3"]);
    assert!(ok, "{err}");
}

#[test]
fn mutual_tls_names_the_user_by_its_certificate_for_the_acl() {
    let pki = TestPki::new("skein test CA");
    let acl = pki.dir.path().join("acl");
    std::fs::write(&acl, "user dave\ntopic readwrite dave/#\n").unwrap();
    let acl = acl.to_string_lossy().into_owned();
    let ca = pki.path("ca.pem");
    let extra = ["--tls-client-ca", &ca, "--use-identity-as-username", "true", "--acl-file", &acl];
    let (_broker, port) = tls_broker(&pki, &extra);
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let creds = ["--cafile", &ca, "--cert", &cert, "--key", &key];
    let (sub, out) = tls_sub(&port, &[&creds[..], &["-t", "dave/#", "-v", "-C", "1"]].concat());
    // Publishing outside dave's branch is dropped (MQTT 3.1.1: acknowledged, not delivered); inside it arrives.
    assert!(tls_pub(&port, &[&creds[..], &["-t", "other/x", "-m", "dropped"]].concat()).0);
    let (ok, err) = tls_pub(&port, &[&creds[..], &["-t", "dave/x", "-m", "as dave"]].concat());
    assert!(ok, "{err}");
    out.wait_for(|l| l == "dave/x as dave");
    sub.wait_output(WAIT);
    // The user name a client claims does not matter: the certificate names it. No certificate, no connection.
    assert!(tls_pub(&port, &[&creds[..], &["-u", "root", "-P", "x", "-t", "dave/y", "-m", "m"]].concat()).0);
    assert!(!tls_pub(&port, &["--cafile", &ca, "-t", "dave/x", "-m", "no certificate"]).0);
}

#[test]
fn paho_over_tls() {
    let pki = TestPki::new("skein test CA");
    let (_broker, port) = tls_broker(&pki, &[]);
    let script = r#"
import sys, threading, ssl
import paho.mqtt.client as mqtt
port, ca = int(sys.argv[1]), sys.argv[2]
got, subscribed = threading.Event(), threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)
c.on_subscribe = lambda *a: subscribed.set()
c.on_message = lambda _c, _u, m: (print(m.topic, m.payload.decode(), c.socket().version()), got.set())
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe("paho/tls", qos=1)
assert subscribed.wait(10), "no SUBACK"
c.publish("paho/tls", "secure", qos=1).wait_for_publish(10)
assert got.wait(10), "no message"
c.disconnect()
"#;
    let out = Command::new(crate::paho::python()).args(["-c", script, &port, &pki.path("ca.pem")]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("paho/tls secure TLSv1."), "{stdout}");
}

#[test]
fn replaced_certificates_are_used_for_new_connections_and_old_ones_stay() {
    let pki = TestPki::new("first CA");
    let (broker, port) = tls_broker(&pki, &[]);
    let old_ca = pki.dir.path().join("old-ca.pem");
    std::fs::copy(pki.path("ca.pem"), &old_ca).unwrap();
    let old_ca = old_ca.to_string_lossy().into_owned();
    let (sub, out) = tls_sub(&port, &["--cafile", &old_ca, "-t", "rot/#", "-v", "-C", "1"]);

    // A new certificate from another CA, written over the files the broker was started with.
    let next = TestPki::new("second CA");
    for f in ["node.key", "node.pem"] {
        std::fs::copy(next.path(f), pki.path(f)).unwrap();
    }
    broker.wait_log("TLS certificates reloaded");
    assert!(!tls_pub(&port, &["--cafile", &old_ca, "-t", "rot/x", "-m", "old CA"]).0, "the old certificate is gone");
    let (ok, err) = tls_pub(&port, &["--cafile", &next.path("ca.pem"), "-t", "rot/x", "-m", "rotated"]);
    assert!(ok, "{err}");
    // The subscriber connected before the change is still there.
    out.wait_for(|l| l == "rot/x rotated");
    sub.wait_output(WAIT);
}
