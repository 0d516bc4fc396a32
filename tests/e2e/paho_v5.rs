//! MQTT 5.0 server obligations, exercised with paho-mqtt's MQTTv5 client (tests/clients/paho_v5.py): one
//! scenario per test, each a real broker process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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

#[test]
fn receive_maximum_and_maximum_packet_size_of_the_client_bound_what_it_is_sent() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "flow_control");
    assert_eq!(v["big_puback"], 0, "accepted from the publisher, dropped only for the small client: {v}");
    assert_eq!(v["at_suback"], 2, "two in flight at most [MQTT-3.3.4-9]: {v}");
    assert_eq!(v["after_acks"], json!([3, 4, 5, 5, 5]), "one more per acknowledgement: {v}");
    assert_eq!(v["got"], json!(["m1", "m2", "m3", "m4", "m5"]), "in order, the big one never sent: {v}");
    assert_eq!(v["server_receive_maximum"], 20, "ours: max_inflight_messages, as with Mosquitto: {v}");
}

#[test]
fn connack_properties_and_the_servers_own_maximum_packet_size_and_qos() {
    let broker = Skein::start(&["--max-packet-size", "1024", "--max-keepalive", "10", "--max-qos", "1"]);
    let v = scenario(&broker, "server_limits");
    assert!(v["assigned"].as_str().unwrap().starts_with("skein-"), "Assigned Client Identifier: {v}");
    assert_eq!(v["keep_alive"], 10, "Server Keep Alive: {v}");
    assert_eq!(v["maximum_packet_size"], 1024, "{v}");
    assert_eq!(v["maximum_qos"], 1, "{v}");
    assert_eq!(v["granted"], json!([1]), "a subscription is granted at most max_qos: {v}");
    assert_eq!(v["too_big"], 0x95, "Packet too large: {v}");
    assert_eq!(v["qos2"], 0x9B, "QoS not supported: {v}");
    // Absent means available (MQTT 5.0 section 3.2.2.3): all four are.
    assert_eq!(
        v["available"],
        json!({"RetainAvailable": null, "WildcardSubscriptionAvailable": null,
               "SubscriptionIdentifierAvailable": null, "SharedSubscriptionAvailable": null}),
        "{v}"
    );
}

#[test]
fn reason_codes_on_acks_and_0x8e_for_a_taken_over_session() {
    let broker = Skein::start(&["--max-subscriptions", "2"]);
    let v = scenario(&broker, "reason_codes");
    assert_eq!(
        v,
        json!({
            "puback_no_subscribers": 0x10,
            "suback_ok": [1],
            "suback_shared_empty_group": [0x8F],
            "suback_shared_no_filter": [0x8F],
            "suback_second": [2],
            "suback_quota": [0x97],
            "unsuback_ok": [0],
            "unsuback_none": [0x11],
            "taken_over": 0x8E,
            "new_one": 0
        })
    );
}

#[test]
fn a_stopping_server_tells_its_clients_0x8b() {
    let mut broker = Skein::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_v5.py");
    let mut cmd = Command::new(crate::paho::python());
    cmd.arg(script).arg(broker.port().to_string()).arg("shutdown").stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Proc::spawn(&mut cmd);
    let mut lines = BufReader::new(child.stdout()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    broker.stop();
    let last = lines.next().expect("the scenario's result").unwrap();
    let v: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["reason"], 0x8B, "Server shutting down: {v}");
}

#[test]
fn clean_start_discards_the_stored_session() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "clean_start");
    assert_eq!(v, json!({"session_present": false, "got": ["csmark"]}), "[MQTT-3.1.2-4]: {v}");
}

#[test]
fn a_shared_group_of_a_5_0_and_a_3_1_1_member_takes_turns_and_redelivers_what_a_leaver_held() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "shared_subscriptions");
    assert_eq!(v["spread"], json!({"a": 5, "b": 5}), "round robin: {v}");
    assert_eq!(v["plain"], 10, "a plain subscription beside the group gets all: {v}");
    assert_eq!(v["b_total"], 10, "b got its own five and the five a left unacknowledged: {v}");
    assert_eq!(v["b_got_held"], true, "{v}");
    assert_eq!(v["distinct"], true, "{v}");
}

#[test]
fn a_5_0_message_reaches_a_paho_3_1_1_subscriber_and_back() {
    let broker = Skein::start(&[]);
    let v = scenario(&broker, "mixed_versions");
    assert_eq!(v["to_old"], json!(["mx/from5", "five", 1]), "{v}");
    assert_eq!(v["to_new"], json!(["mx/from3", "three", 1, {}]), "at the granted QoS, no properties: {v}");
}
