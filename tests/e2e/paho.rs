//! Eclipse Paho for Python (paho-mqtt 2.x, installed by the test command into `.venv`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::*;

pub fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(py.exists(), "{} is missing: run ./scripts/test, which installs paho-mqtt there", py.display());
    py
}

fn run(broker: &Skein, version: &str) -> serde_json::Value {
    run_on(&[broker.port()], version)
}

/// The script with its subscriber on `ports[0]`, and its publisher and late subscriber on the next ports if given.
pub fn run_on(ports: &[u16], version: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).arg(ports[0].to_string()).arg(version).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.args(ports[1..].iter().map(|p| p.to_string()));
    let out = Proc::spawn(&mut cmd).wait_output(WAIT * 2);
    assert!(out.status.success(), "paho {version}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

pub fn check(v: &serde_json::Value, prefix: &str) {
    assert_eq!(v["granted"], serde_json::json!([2]));
    for qos in 0..3 {
        let m = &v["live"][qos];
        assert_eq!(m["topic"], format!("{prefix}/q{qos}"));
        assert_eq!(m["payload"], format!("hello qos {qos}"));
        assert_eq!(m["qos"], qos, "delivered at the QoS it was published with");
        assert_eq!(m["retain"], false, "[MQTT-3.3.1-9] live messages carry retain 0");
    }
    assert_eq!(v["retained"]["payload"], "kept");
    assert_eq!(v["retained"]["retain"], true, "[MQTT-3.3.1-8]");
}

#[test]
fn paho_mqtt_v31_v311_v5() {
    let broker = Skein::start(&[]);
    for version in ["31", "311", "5"] {
        check(&run(&broker, version), &format!("paho{version}"));
    }
}
