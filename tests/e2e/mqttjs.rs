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

#[test]
fn mqtt_js_v5_aliases_properties_subscription_ids_expiry_and_sessions() {
    let broker = Skein::start(&[]);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let mut cmd = Command::new("node");
    cmd.current_dir(dir)
        .arg("mqttjs_v5.js")
        .arg(broker.port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::spawn(&mut cmd).wait_output(WAIT * 2);
    assert!(out.status.success(), "MQTT.js v5: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["connack"]["topicAliasMaximum"], 10, "{v}");
    let messages = v["messages"].as_array().expect("list");
    let payloads: Vec<&str> = messages.iter().map(|m| m["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"], "in order: {v}");
    for m in messages {
        assert_eq!(m["topic"], "jsv5/aliased/topic", "the alias resolved to its topic: {v}");
        assert_eq!(m["topicAlias"], 1, "sent by alias, resolved by MQTT.js: {v}");
        assert_eq!(m["subscriptionIdentifier"], 7, "{v}");
    }
    let first = &messages[0];
    assert_eq!(first["userProperties"], serde_json::json!({"a": "1", "b": ["2", "3"]}), "{v}");
    assert_eq!(first["contentType"], "application/json");
    assert_eq!(first["responseTopic"], "jsv5/reply");
    assert_eq!(first["correlationData"], "c-42");
    let left = first["messageExpiryInterval"].as_u64().expect("expiry sent on");
    assert!((295..=300).contains(&left), "{v}");
    assert_eq!(v["resumed"], serde_json::json!({"sessionPresent": true, "message": "while away"}), "{v}");
}
