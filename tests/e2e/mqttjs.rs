//! MQTT.js 5.x under Node (installed by the test command into `tests/clients/node_modules`).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

fn run(broker: &Skein, version: u8) -> serde_json::Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    assert!(Path::new(dir).join("node_modules/mqtt").exists(), "MQTT.js is missing: run ./scripts/test");
    let mut cmd = Command::new("node");
    cmd.current_dir(dir)
        .arg("mqttjs_client.js")
        .arg(broker.port().to_string())
        .arg(version.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::spawn(&mut cmd).wait_output(WAIT * 2);
    assert!(out.status.success(), "MQTT.js v{version}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn mqtt_js_protocol_4_and_5() {
    let broker = Skein::start(&[]);
    for version in [4u8, 5] {
        let v = run(&broker, version);
        assert_eq!(v["granted"], serde_json::json!([2]));
        let mut live: Vec<&serde_json::Value> = v["live"].as_array().expect("list").iter().collect();
        live.sort_by_key(|m| m["topic"].as_str().map(str::to_owned));
        for (qos, m) in live.iter().enumerate() {
            assert_eq!(m["topic"], format!("js{version}/q{qos}"));
            assert_eq!(m["payload"], format!("hello qos {qos}"));
            assert_eq!(m["qos"], qos);
            assert_eq!(m["retain"], false);
        }
        assert_eq!(v["retained"]["payload"], "kept");
        assert_eq!(v["retained"]["retain"], true);
    }
}
