//! The seed's own clients, mosquitto_pub and mosquitto_sub, against skein.

use crate::support::*;

#[test]
fn qos_0_1_2_round_trips_in_every_version() {
    let broker = Skein::start(&[]);
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let topic = format!("rt/{version}/{qos}");
            let (sub, out) = mosquitto_sub(&broker, &["-V", version, "-t", &topic, "-q", qos, "-C", "1", "-v"]);
            let body = format!("payload {version} {qos}");
            mosquitto_pub(&broker, &["-V", version, "-t", &topic, "-q", qos, "-m", &body]);
            out.wait_for(|l| l == format!("{topic} {body}"));
            // mosquitto_sub -d reports the QoS it received the message at.
            out.wait_for(|l| l.contains("received PUBLISH") && l.contains(&format!("q{qos},")));
            let status = sub.wait_output(WAIT).status;
            assert!(status.success(), "mosquitto_sub {version} q{qos} exited with {status}");
        }
    }
}

#[test]
fn delivered_qos_is_the_lower_of_publish_and_subscription() {
    let broker = Skein::start(&[]);
    let (_sub, out) = mosquitto_sub(&broker, &["-t", "dq/#", "-q", "1", "-v"]);
    mosquitto_pub(&broker, &["-t", "dq/a", "-q", "2", "-m", "x"]);
    // `-d` prints "received PUBLISH (d0, q1, ...": granted QoS 1 caps the QoS 2 publish.
    out.wait_for(|l| l.contains("received PUBLISH") && l.contains("q1"));
    mosquitto_pub(&broker, &["-t", "dq/b", "-q", "0", "-m", "y"]);
    out.wait_for(|l| l.contains("received PUBLISH") && l.contains("q0") && l.contains("dq/b"));
}

#[test]
fn retained_set_replace_clear() {
    let broker = Skein::start(&[]);
    mosquitto_pub(&broker, &["-t", "ret/a", "-r", "-m", "first"]);
    mosquitto_pub(&broker, &["-t", "ret/a", "-r", "-m", "second"]);
    let (sub, out) = mosquitto_sub(&broker, &["-t", "ret/#", "-C", "1", "-v"]);
    // The retained copy arrives with the retain flag set [MQTT-3.3.1-8].
    out.wait_for(|l| l.contains("received PUBLISH") && l.contains("r1"));
    out.wait_for(|l| l == "ret/a second");
    sub.wait_output(WAIT);
    // An empty retained payload clears it [MQTT-3.3.1-6]; a fresh subscriber gets nothing, then a live message.
    mosquitto_pub(&broker, &["-t", "ret/a", "-r", "-n"]);
    let (sub, out) = mosquitto_sub(&broker, &["-t", "ret/#", "-C", "1", "-v"]);
    mosquitto_pub(&broker, &["-t", "ret/b", "-m", "live"]);
    out.wait_for(|l| l == "ret/b live");
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), vec!["ret/b live".to_string()], "the cleared retained message came back");
}

#[test]
fn will_of_a_killed_client_is_published() {
    let broker = Skein::start(&[]);
    let (_watcher, out) = mosquitto_sub(&broker, &["-t", "wills/#", "-v"]);
    let (mut victim, _) = mosquitto_sub(
        &broker,
        &["-i", "victim", "-t", "x", "--will-topic", "wills/victim", "--will-payload", "gone", "--will-qos", "1"],
    );
    victim.kill9();
    out.wait_for(|l| l == "wills/victim gone");
}

#[test]
fn a_retained_will_is_kept_for_later_subscribers() {
    let broker = Skein::start(&[]);
    let (_watcher, live) = mosquitto_sub(&broker, &["-t", "status/#", "-v"]);
    let (mut victim, _) = mosquitto_sub(
        &broker,
        &["-i", "rv", "-t", "x", "--will-topic", "status/rv", "--will-payload", "offline", "--will-retain"],
    );
    victim.kill9();
    live.wait_for(|l| l == "status/rv offline");
    let (sub, out) = mosquitto_sub(&broker, &["-t", "status/#", "-v", "-C", "1"]);
    out.wait_for(|l| l == "status/rv offline");
    sub.wait_output(WAIT);
    assert!(out.wait_for(|l| l.contains("received PUBLISH")).contains("r1"), "delivered as retained");
}

#[test]
fn will_is_not_sent_after_a_clean_disconnect() {
    let broker = Skein::start(&[]);
    let (_watcher, out) = mosquitto_sub(&broker, &["-t", "wills/#", "-t", "done", "-v"]);
    // mosquitto_pub disconnects cleanly after publishing.
    mosquitto_pub(&broker, &["-t", "x", "-m", "m", "--will-topic", "wills/pub", "--will-payload", "gone"]);
    // A marker published after it: by then the will would have been routed.
    mosquitto_pub(&broker, &["-t", "done", "-m", "marker"]);
    out.wait_for(|l| l == "done marker");
    assert!(
        !out.messages().iter().any(|l| l.starts_with("wills/")),
        "will sent after DISCONNECT: {:?}",
        out.messages()
    );
}

#[test]
fn wildcards_and_dollar_topics() {
    let broker = Skein::start(&["--sys-interval", "1"]);
    let (_all, all) = mosquitto_sub(&broker, &["-t", "#", "-v"]);
    let (_plus, plus) = mosquitto_sub(&broker, &["-t", "+/b/+", "-v"]);
    let (_sys, sys) = mosquitto_sub(&broker, &["-t", "$SYS/broker/uptime", "-v"]);
    let (_load, load) = mosquitto_sub(&broker, &["-t", "$SYS/broker/load/messages/received/+", "-v"]);
    mosquitto_pub(&broker, &["-t", "a/b/c", "-m", "1"]);
    plus.wait_for(|l| l == "a/b/c 1");
    all.wait_for(|l| l == "a/b/c 1");
    sys.wait_for(|l| l.starts_with("$SYS/broker/uptime ") && l.ends_with(" seconds"));
    // Mosquitto's load averages: packets received per minute, over the last minute.
    load.wait_for(|l| {
        l.strip_prefix("$SYS/broker/load/messages/received/1min ")
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    });
    mosquitto_pub(&broker, &["-t", "z", "-m", "marker"]);
    all.wait_for(|l| l == "z marker");
    // [MQTT-4.7.2-1]: `#` does not match $SYS topics, although they were published meanwhile.
    assert!(!all.messages().iter().any(|l| l.starts_with('$')), "{:?}", all.messages());
}

/// Mosquitto's `$SYS` counts of sessions and shared subscriptions: `clients/expired` (sessions ended by their
/// expiry interval), `clients/inactive` (persistent sessions without a connection) and
/// `shared_subscriptions/count`.
#[test]
fn sys_counts_expired_and_inactive_sessions_and_shared_subscriptions() {
    let broker = Skein::start(&["--sys-interval", "1"]);
    let (_shared, _) = mosquitto_sub(&broker, &["-t", "$share/g/x", "-q", "1"]);
    for (id, expiry) in [("brief", "1"), ("lasting", "300")] {
        let (sub, _) = mosquitto_sub(&broker, &["-V", "mqttv5", "-i", id, "-c", "-x", expiry, "-t", "s/t", "-E"]);
        sub.wait_output(WAIT);
    }
    let (_sys, sys) = mosquitto_sub(&broker, &["-t", "$SYS/broker/#", "-v"]);
    for line in
        ["$SYS/broker/clients/expired 1", "$SYS/broker/clients/inactive 1", "$SYS/broker/shared_subscriptions/count 1"]
    {
        sys.wait_for(|l| l == line);
    }
}

/// Mosquitto's `$SYS` payload byte counts (`publish/bytes/received`, `publish/bytes/sent`) and heap figures
/// (`heap/current`, `heap/maximum`).
#[test]
fn sys_counts_publish_payload_bytes_and_the_heap() {
    let broker = Skein::start(&["--sys-interval", "1"]);
    let (sub, out) = mosquitto_sub(&broker, &["-t", "bytes/t", "-q", "1", "-C", "2"]);
    for _ in 0..2 {
        mosquitto_pub(&broker, &["-t", "bytes/t", "-q", "1", "-m", "12345"]);
    }
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), ["12345", "12345"]);
    let (_sys, sys) = mosquitto_sub(&broker, &["-t", "$SYS/broker/publish/bytes/+", "-t", "$SYS/broker/heap/+", "-v"]);
    // The first value seen may be one published before the two came in (they are retained, and sent each second
    // that they change): each is waited for until it says what it must.
    let value = |topic: &str, ok: &dyn Fn(u64) -> bool| -> u64 {
        let line = sys.wait_for(|l| {
            l.strip_prefix(topic)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .is_some_and(|v: u64| ok(v))
        });
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_default()
    };
    // Only the two publishes came from clients: `$SYS` messages are the broker's own.
    value("$SYS/broker/publish/bytes/received", &|v| v == 10);
    // The subscriber's two, and the `$SYS` messages sent so far to this watcher.
    value("$SYS/broker/publish/bytes/sent", &|v| v >= 10);
    let current = value("$SYS/broker/heap/current", &|v| v > 0);
    value("$SYS/broker/heap/maximum", &|v| v >= current);
}

#[test]
fn persistent_session_gets_queued_qos1_messages_on_return() {
    let broker = Skein::start(&[]);
    // -E: leave (cleanly) as soon as the SUBACK is in; with -c the session stays.
    let (sub, _) = mosquitto_sub(&broker, &["-i", "durable", "-c", "-q", "1", "-t", "q/t", "-E"]);
    sub.wait_output(WAIT);
    for i in 0..3 {
        mosquitto_pub(&broker, &["-t", "q/t", "-q", "1", "-m", &format!("queued {i}")]);
    }
    let (sub, out) = mosquitto_sub_started(&broker, &["-i", "durable", "-c", "-q", "1", "-t", "q/t", "-C", "3"]);
    out.wait_for(|l| l == "queued 2");
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), vec!["queued 0", "queued 1", "queued 2"], "in order, once each");
    // Session present: mosquitto_sub -d prints the CONNACK flags as "received CONNACK (0)" only; the raw-client
    // suite checks the flag itself.
}

/// Mosquitto's `persistent_client_expiration`: a 3.1.1 persistent session whose client has been away that long is
/// gone, with what was queued for it; an MQTT 5.0 session keeps its own Session Expiry Interval.
#[test]
fn persistent_client_expiration_ends_3x_sessions_left_that_long() {
    let broker = Skein::start(&["--persistent-client-expiration", "2", "--sys-interval", "1"]);
    let (sub, _) = mosquitto_sub(&broker, &["-i", "brief", "-c", "-q", "1", "-t", "pe/#", "-E"]);
    sub.wait_output(WAIT);
    let (sub, _) =
        mosquitto_sub(&broker, &["-V", "mqttv5", "-x", "300", "-i", "lasting", "-c", "-q", "1", "-t", "pe/#", "-E"]);
    sub.wait_output(WAIT);
    mosquitto_pub(&broker, &["-t", "pe/a", "-q", "1", "-m", "queued"]);
    // The broker says when a session expired ($SYS, every second): one of the two, two seconds after it left.
    let (expired, out) = mosquitto_sub(&broker, &["-t", "$SYS/broker/clients/expired", "-v"]);
    out.wait_for(|l| l == "$SYS/broker/clients/expired 1");
    drop(expired);
    let (sub, out) = mosquitto_sub(&broker, &["-i", "brief", "-c", "-q", "1", "-t", "pe/#", "-C", "1"]);
    mosquitto_pub(&broker, &["-t", "pe/b", "-q", "1", "-m", "marker"]);
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), ["marker"], "the expired session's queue went with it");
    let (sub, out) = mosquitto_sub_started(
        &broker,
        &["-V", "mqttv5", "-x", "300", "-i", "lasting", "-c", "-q", "1", "-t", "pe/#", "-C", "2"],
    );
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), ["queued", "marker"], "a 5.0 session keeps its own interval");
}

/// Mosquitto's `use_username_as_clientid`: the user name is the session, whatever id the client sends; and
/// `clientid_prefixes`: other ids are refused as not authorised.
#[test]
fn client_ids_can_be_the_user_name_or_need_a_prefix() {
    let broker = Skein::start(&["--use-username-as-clientid", "true"]);
    let (sub, _) = mosquitto_sub(&broker, &["-u", "alice", "-i", "first", "-c", "-q", "1", "-t", "u/#", "-E"]);
    sub.wait_output(WAIT);
    mosquitto_pub(&broker, &["-u", "bob", "-t", "u/a", "-q", "1", "-m", "queued for alice"]);
    let (sub, out) =
        mosquitto_sub_started(&broker, &["-u", "alice", "-i", "another", "-c", "-q", "1", "-t", "u/#", "-C", "1"]);
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), ["queued for alice"], "the same session, by its user name");
    let pub_status = |broker: &Skein, args: &[&str]| {
        let out = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string(), "-t", "u/b", "-m", "x"])
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = pub_status(&broker, &["-i", "nameless"]);
    assert!(!ok && err.contains("not authorised"), "no user name, no client id: {err}");

    let broker = Skein::start(&["--clientid-prefixes", "plant-"]);
    assert!(pub_status(&broker, &["-i", "plant-7"]).0);
    let (ok, err) = pub_status(&broker, &["-i", "office-1"]);
    assert!(!ok && err.contains("not authorised"), "{err}");
}
