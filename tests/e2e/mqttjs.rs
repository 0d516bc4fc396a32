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

/// Runs one of tests/clients' MQTT.js scripts against `broker` (`node SCRIPT PORT`) and returns its JSON line.
fn script(broker: &Skein, name: &str, limit: std::time::Duration) -> serde_json::Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    assert!(Path::new(dir).join("node_modules/mqtt").exists(), "MQTT.js is missing: run ./scripts/test");
    let mut cmd = Command::new("node");
    cmd.current_dir(dir).arg(name).arg(broker.port().to_string()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = Proc::spawn(&mut cmd).wait_output(limit);
    assert!(out.status.success(), "MQTT.js {name}: {}", String::from_utf8_lossy(&out.stderr));
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
    let v = script(&broker, "mqttjs_v5.js", WAIT * 2);
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

#[test]
fn mqtt_js_v5_reason_codes_takeover_options_flow_shared_expiry_will_delay_request_response_auth_and_3_1_1() {
    let broker = Skein::start(&["--max-keepalive", "10", "--max-subscriptions", "3"]);
    let v = script(&broker, "mqttjs_v5_more.js", WAIT * 4);
    let assigned = v["connack"]["assigned"].as_str().expect("Assigned Client Identifier");
    assert!(assigned.starts_with("skein-"), "{v}");
    assert_eq!(v["connack"]["serverKeepAlive"], 10, "{v}");
    assert_eq!(v["connack"]["responseInformation"], format!("response/{assigned}"), "{v}");
    assert_eq!(
        v["reasons"],
        serde_json::json!({"puback": 0x10, "granted": 2, "emptyGroup": 0x8F, "second": 1, "third": 1, "quota": 0x97,
                           "unsuback": [0x11], "payloadFormat": 0x99}),
        "{v}"
    );
    assert_eq!(v["takenOver"], 0x8E, "{v}");
    assert_eq!(
        v["options"],
        serde_json::json!([["js-opts/kept", true], ["js-opts/live", true]]),
        "retained once (Retain Handling 2 sent none), retain flag as published, own message not echoed: {v}"
    );
    assert_eq!(v["flow"], serde_json::json!(["m1", "m2", "m3", "m4", "m5"]), "the 500-byte one dropped: {v}");
    assert_eq!(v["shared"], serde_json::json!([5, 5]), "{v}");
    assert_eq!(v["will"]["topic"], "js-will/gone");
    assert!(v["will"]["waitedMs"].as_u64().unwrap() >= 900, "the will waited out its delay: {v}");
    assert_eq!(v["sessionPresent"], serde_json::json!({"js-sx-short": false, "js-sx-long": true}), "{v}");
    assert_eq!(v["response"], serde_json::json!({"payload": "re: ping", "correlation": "corr-9"}), "{v}");
    assert_eq!(v["auth"], 0x8C, "{v}");
    assert_eq!(v["mixed"], serde_json::json!({"topic": "js-mx/t", "payload": "to old", "qos": 2}), "{v}");
}
