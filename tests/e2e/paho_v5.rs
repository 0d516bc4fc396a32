//! MQTT 5.0 server obligations, exercised with paho-mqtt's MQTTv5 client (tests/clients/paho_v5.py): one
//! scenario per test, each a real broker process.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

fn scenario(broker: &Skein, name: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_v5.py");
    let out =
        Command::new(crate::paho::python()).arg(script).arg(broker.port().to_string()).arg(name).output().unwrap();
    assert!(
        out.status.success(),
        "paho_v5 {name}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn topic_aliases_from_the_client_resolve_and_one_out_of_range_is_refused_with_0x94() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "topic_alias");
    assert_eq!(v["maximum"], 10, "Topic Alias Maximum in CONNACK: {v}");
    assert_eq!(
        v["got"],
        json!([
            ["alias/long/topic/name", "set"],
            ["alias/long/topic/name", "by alias"],
            ["alias/other", "re-set"],
            ["alias/other", "by new alias"]
        ]),
        "{v}"
    );
    assert_eq!(v["alias_props_forwarded"], false, "aliases are per connection [MQTT-3.3.2-12]");
    assert_eq!(v["disconnect"], 0x94, "{v}");
}

#[test]
fn expired_messages_are_not_delivered_and_the_rest_carry_what_is_left_of_their_interval() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "message_expiry");
    assert_eq!(v["session_present"], true);
    let got = v["got"].as_array().unwrap();
    assert_eq!(got.len(), 2, "exp/short expired while the subscriber was away: {v}");
    assert_eq!(got[0][0], "exp/long");
    let left = got[0][2].as_u64().unwrap();
    assert!((290..300).contains(&left), "the interval less the time it waited [MQTT-3.3.2-6]: {v}");
    assert_eq!(got[1], json!(["exp/none", "forever", null]));
    assert_eq!(v["retained"], json!(["rexp/fresh"]), "an expired retained message is not sent: {v}");
}

#[test]
fn a_session_ends_after_its_expiry_interval_and_disconnect_can_shorten_it() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "session_expiry");
    assert_eq!(v["present"], json!({"sx-short": false, "sx-long": true, "sx-changed": false}), "{v}");
}

#[test]
fn a_delayed_will_is_cancelled_by_a_return_and_sent_when_the_delay_or_the_session_ends() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "will_delay");
    assert_eq!(v["got"], json!(["will/gone", "will/short"]), "{v}");
    assert!(v["waited"].as_f64().unwrap() >= 0.9, "the will waited out its delay: {v}");
}

#[test]
fn request_response_information_response_topic_and_correlation_data() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "request_response");
    assert_eq!(v["info"], "response/responder", "{v}");
    assert_eq!(v["payload"], "answer to what time");
    // paho's JSON view of binary properties is hex: b"\x00\x01corr".
    assert_eq!(v["correlation"], "0001636f7272", "the correlation data came back unchanged: {v}");
}

#[test]
fn user_properties_content_type_and_payload_format_pass_through_and_bad_utf8_is_refused() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "properties_pass_through");
    assert_eq!(v["puback_ok"], 0);
    assert_eq!(v["puback_bad"], 0x99, "Payload format invalid: {v}");
    let p = &v["props"];
    assert_eq!(p["UserProperty"], json!([["a", "1"], ["a", "2"], ["b", "x"]]), "in order, repeats kept: {v}");
    assert_eq!(p["ContentType"], "text/plain");
    assert_eq!(p["PayloadFormatIndicator"], 1);
    assert_eq!(p["ResponseTopic"], "props/reply");
    assert_eq!(v["count"], 1, "the invalid one was not delivered");
}

#[test]
fn no_local_and_retain_as_published() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "subscription_options");
    assert_eq!(v["got"], json!([["opts/retained", true], ["opts/live", true]]), "own message not echoed: {v}");
}

#[test]
fn an_unknown_authentication_method_is_refused_with_0x8c() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "unknown_auth_method");
    assert_eq!(v["reason"], 0x8C);
    assert_eq!(v["reason_string"], "this authentication method is not offered here", "a Reason String on errors");
}

#[test]
fn retain_handling_0_1_2() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "retain_handling");
    assert_eq!(
        v,
        json!({"0 new": ["rh/t"], "0 again": ["rh/t"], "1 again": [], "1 new": ["rh/t"], "2 new": []}),
        "0: always; 1: only for a new subscription; 2: never [MQTT-3.3.1-9..11]"
    );
}

#[test]
fn one_message_carries_every_matching_subscription_identifier() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "subscription_identifiers");
    assert_eq!(v, json!({"count": 1, "ids": [1, 2]}), "[MQTT-3.3.4-3]");
}
