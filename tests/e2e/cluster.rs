//! Several real `skein` processes as one broker: formation, cross-node delivery, retained messages, joining,
//! restarts, and clients behind HAProxy.

use std::process::Command;

use skein_codec::{Ack, Packet, ProtocolVersion, QoS};

use crate::support::*;

fn port_of(s: &Skein) -> String {
    s.port().to_string()
}

/// mosquitto_pub against a given port.
fn publish_to(port: &str, args: &[&str]) {
    let out = Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", port]).args(args).output().unwrap();
    assert!(out.status.success(), "mosquitto_pub {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A subscriber on `to` (node id `to_id`) gets, once node `from` has its route, the QoS 1 message `topic payload`
/// published on node `from`: the cluster delivers between them.
fn delivers_across(c: &Nodes, from: usize, to: &Skein, to_id: u64, topic: &str, payload: &str) {
    let filter = format!("{}/#", topic.split('/').next().unwrap());
    let (sub, out) = mosquitto_sub(to, &["-t", &filter, "-q", "1", "-v", "-C", "1"]);
    c.wait_node_routes(from, to_id, 1);
    publish_to(&port_of(&c.nodes[from]), &["-t", topic, "-q", "1", "-m", payload]);
    out.wait_for(|l| l == format!("{topic} {payload}"));
    sub.wait_output(WAIT);
}

#[test]
fn three_nodes_form_one_cluster_and_deliver_across_nodes() {
    let c = Nodes::start(3);
    let status = c.status(0);
    assert_eq!(status["members"].as_array().map(|m| m.len()), Some(3), "{status}");
    let leaders: Vec<_> = (0..3).map(|i| c.status(i)["leader"].clone()).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && !l.is_null()), "one leader for all: {leaders:?}");
    // A subscriber on node 2, publishers on nodes 1 and 3, every QoS.
    let (sub, out) = mosquitto_sub(&c.nodes[1], &["-t", "x/#", "-q", "2", "-v", "-C", "3"]);
    for i in [0, 2] {
        c.wait_routes(i, 1);
    }
    publish_to(&port_of(&c.nodes[0]), &["-t", "x/0", "-q", "0", "-m", "zero"]);
    publish_to(&port_of(&c.nodes[2]), &["-t", "x/1", "-q", "1", "-m", "one"]);
    publish_to(&port_of(&c.nodes[0]), &["-t", "x/2", "-q", "2", "-m", "two"]);
    let mut got = out.wait_messages(3);
    sub.wait_output(WAIT);
    // Each once; MQTT orders messages per publisher, and these are three publishers on two nodes.
    got.sort();
    assert_eq!(got, vec!["x/0 zero", "x/1 one", "x/2 two"]);
}

#[test]
fn paho_clients_on_three_nodes_are_served_as_by_one_broker() {
    let c = Nodes::start(3);
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.port()).collect();
    // Subscriber on node 1, publisher on node 2 (QoS 0, 1, 2), retained subscriber on node 3; every version.
    for version in ["31", "311", "5"] {
        crate::paho::check(&crate::paho::run_on(&ports, version), &format!("paho{version}"));
    }
}

#[test]
fn rumqttc_across_nodes_at_every_qos() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let c = Nodes::start(3);
    let options = |i: usize, id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", c.nodes[i].port());
        o.set_keep_alive(std::time::Duration::from_secs(30));
        o
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use crate::rumqttc_client::{next_publish, published, until};
        let (sub, mut sub_ev) = AsyncClient::new(options(2, "rq-cluster-sub"), 16);
        sub.subscribe("rqc/#", QoS::ExactlyOnce).await.unwrap();
        until(&mut sub_ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
        c.wait_node_routes(0, 3, 1);
        let (publ, mut pub_ev) = AsyncClient::new(options(0, "rq-cluster-pub"), 16);
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            publ.publish(format!("rqc/{i}"), qos, false, format!("m{i}")).await.unwrap();
            published(&mut pub_ev, qos).await;
            let p = next_publish(&mut sub_ev).await;
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos),
                (format!("rqc/{i}").as_str(), format!("m{i}").as_bytes(), qos),
                "from node 1 to a subscriber on node 3"
            );
        }
    });
}

#[test]
fn retained_set_on_one_node_is_seen_from_the_others() {
    let c = Nodes::start(3);
    publish_to(&port_of(&c.nodes[0]), &["-t", "r/t", "-r", "-q", "1", "-m", "kept"]);
    for i in [1, 2] {
        let (sub, out) = mosquitto_sub(&c.nodes[i], &["-t", "r/#", "-v", "-C", "1"]);
        out.wait_for(|l| l == "r/t kept");
        sub.wait_output(WAIT);
    }
}

/// Waits until node `i` holds `count` retained messages.
fn wait_retained(c: &Nodes, i: usize, count: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    while c.status(i)["retained"].as_u64() != Some(count) {
        assert!(std::time::Instant::now() < deadline, "node {i} never held {count} retained: {}", c.status(i));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_node_that_missed_compacted_log_catches_up_from_a_snapshot_and_restarts_from_its_own() {
    // A snapshot every 20 entries: the log a stopped node misses is compacted away before it returns.
    let mut c = Nodes::start_with(3, &["--raft-snapshot-logs", "20"]);
    c.nodes[2].kill9();
    let first = port_of(&c.nodes[0]);
    for i in 0..60 {
        publish_to(&first, &["-t", &format!("snap/{i}"), "-r", "-q", "1", "-m", &format!("v{i}")]);
    }
    publish_to(&first, &["-t", "snap/0", "-r", "-q", "1", "-n"]);
    publish_to(&port_of(&c.nodes[1]), &["-t", "snap/1", "-r", "-q", "1", "-m", "changed"]);
    let leader = (0..2).find(|i| c.status(*i)["leader"] == c.status(*i)["node_id"]).expect("a leader of two");
    // The leader compacts its log on its own time, after the snapshot it builds in the background.
    let deadline = std::time::Instant::now() + WAIT;
    let purged = loop {
        let purged = c.status(leader)["purged_index"].as_u64().unwrap_or(0);
        if purged > 20 {
            break purged;
        }
        assert!(std::time::Instant::now() < deadline, "the leader compacted its log: {}", c.status(leader));
        std::thread::sleep(std::time::Duration::from_millis(20));
    };

    let join = c.cluster_addrs.join(",");
    c.nodes[2] = c.spawn(2, &join);
    wait_ready(c.nodes[2].http.unwrap());
    // Ready means caught up: everything it missed is there before the first client comes.
    assert_eq!(c.status(2)["retained"].as_u64(), Some(59), "{}", c.status(2));
    assert!(c.status(2)["snapshot_index"].as_u64() >= Some(purged), "it took a snapshot: {}", c.status(2));
    let check = |c: &Nodes| {
        let (sub, out) = mosquitto_sub(&c.nodes[2], &["-t", "snap/#", "-v", "-C", "59"]);
        let got = out.wait_messages(59);
        sub.wait_output(WAIT);
        assert_eq!(got.len(), 59, "{got:?}");
        assert!(got.iter().all(|l| l != "snap/0 v0" && l != "snap/1 v1"), "the newest of each topic: {got:?}");
        assert!(got.contains(&"snap/59 v59".to_string()), "{got:?}");
    };
    check(&c);

    // Its own log now starts after its snapshot: a restart starts from that snapshot.
    assert_eq!(c.nodes[2].stop(), Some(0));
    c.nodes[2] = c.spawn(2, &join);
    wait_ready(c.nodes[2].http.unwrap());
    assert_eq!(c.status(2)["retained"].as_u64(), Some(59), "{}", c.status(2));
    check(&c);
}

#[test]
fn a_restarted_node_is_ready_only_once_it_has_the_log_it_missed() {
    let mut c = Nodes::start(3);
    assert_eq!(c.nodes[2].stop(), Some(0));
    let first = port_of(&c.nodes[0]);
    let lines: String = (0..100).map(|i| format!("missed {i}\n")).collect();
    for i in 0..20 {
        publish_to(&first, &["-t", &format!("missed/{i}"), "-r", "-q", "1", "-m", &format!("m{i}")]);
    }
    // Many more entries to replay than one append carries.
    let mut many = Command::new("mosquitto_pub");
    many.args(["-h", "127.0.0.1", "-p", &first, "-t", "missed/lines", "-r", "-q", "1", "-l"]);
    assert!(Proc::spawn_with_stdin(&mut many, lines.as_bytes()).wait_output(WAIT).status.success());
    wait_retained(&c, 1, 21);
    let join = c.cluster_addrs.join(",");
    c.nodes[2] = c.spawn(2, &join);
    wait_ready(c.nodes[2].http.unwrap());
    assert_eq!(c.status(2)["retained"].as_u64(), Some(21), "{}", c.status(2));
    let (sub, out) = mosquitto_sub(&c.nodes[2], &["-t", "missed/lines", "-v", "-C", "1"]);
    out.wait_for(|l| l == "missed/lines missed 99");
    sub.wait_output(WAIT);
}

/// A retained message's expiry is kept in the log as wall-clock time: a node that applies it again after a restart
/// (or late) counts the interval from its publish, not from then. It used to give a message that had expired while
/// it was down the whole interval again.
#[test]
fn a_retained_message_that_expired_while_a_node_was_down_stays_expired_there() {
    use skein_codec::*;
    let mut c = Nodes::start(3);
    let published_at = std::time::Instant::now();
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V5, "pub", true));
    for (id, (name, expiry)) in [("brief", 2), ("lasting", 300)].into_iter().enumerate() {
        let Packet::Publish(mut p) = publish_owned(&format!("exp/{name}"), QoS::AtLeastOnce, id as u16 + 1, "m") else {
            unreachable!()
        };
        p.retain = true;
        p.properties.message_expiry_interval = Some(expiry);
        publ.send(&Packet::Publish(p));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    }
    wait_retained(&c, 2, 2);
    assert_eq!(c.nodes[2].stop(), Some(0));
    // Past "brief"'s two seconds: the interval is what is tested.
    std::thread::sleep(std::time::Duration::from_millis(2600).saturating_sub(published_at.elapsed()));
    c.nodes[2] = c.spawn(2, &c.cluster_addrs.join(","));
    wait_ready(c.nodes[2].http.unwrap());
    for i in [2, 1] {
        let (mut sub, _) = Raw::connect(c.nodes[i].mqtt, connect_packet(ProtocolVersion::V5, "later", true));
        sub.send(&sub_packet(1, &[("exp/#", QoS::AtMostOnce)]));
        assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
        // The retained set comes before a message published after the SUBACK.
        let got: Vec<(String, bool)> = until_marker(&mut sub, "exp/zz")
            .into_iter()
            .map(|p| (p.topic.to_string(), (290..=298).contains(&p.properties.message_expiry_interval.unwrap_or(0))))
            .collect();
        assert_eq!(
            got,
            [("exp/lasting".to_string(), true)],
            "node {}: only what has not expired, with what is left",
            i + 1
        );
    }
}

/// Messages over gRPC's default 4 MiB limit go between nodes: a live one of 5 MiB reaches a subscriber on another
/// node. A retained one is a Raft entry; one of 1 MiB (`cluster_retain_max_size`) is replicated without costing the
/// leader its quorum, and a larger one is refused (MQTT 5.0: 0x97). Both were acknowledged and then lost, and the
/// leader, unable to replicate the entry, was voted out again and again.
#[test]
fn messages_over_4_mib_reach_the_other_nodes_and_large_retained_ones_are_refused() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let leader = (0..3).find(|i| c.status(*i)["leader"] == c.status(*i)["node_id"]).expect("a leader");
    let (other, third) = ((leader + 1) % 3, (leader + 2) % 3);
    let term = c.status(leader)["term"].clone();
    let filters = [("big/#", QoS::AtLeastOnce)];
    let mut sub = raw_subscriber(c.nodes[other].mqtt, ProtocolVersion::V311, "big-sub", &filters);
    c.wait_node_routes(leader, other as u64 + 1, 1);
    let bytes = |n: u32| -> Bytes { (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into() };
    let (mut publ, _) = Raw::connect(c.nodes[leader].mqtt, connect_packet(ProtocolVersion::V5, "big-pub", true));
    let live = bytes(5 << 20);
    publ.send(&publish_owned("big/live", QoS::AtLeastOnce, 1, live.clone()));
    assert!(matches!(publ.recv(), Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::Success));
    let got = expect_publish(&mut sub);
    assert!(got.topic == "big/live" && got.payload == live, "{} bytes on {}", got.payload.len(), got.topic);
    sub.send(&Packet::PubAck(Ack::new(got.packet_id)));
    for (id, size, reason) in [(2, 5 << 20, ReasonCode::QuotaExceeded), (3, 1 << 20, ReasonCode::Success)] {
        let Packet::Publish(mut p) = publish_owned("big/kept", QoS::AtLeastOnce, id, bytes(size)) else {
            unreachable!()
        };
        p.retain = true;
        publ.send(&Packet::Publish(p));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(a)) if a.reason_code == reason), "{size} bytes retained");
    }
    // The refused one went nowhere: the next message the subscriber gets is the 1 MiB one.
    let got = expect_publish(&mut sub);
    assert_eq!(got.payload.len(), 1 << 20);
    for i in 0..3 {
        wait_retained(&c, i, 1);
    }
    let mut later =
        raw_subscriber(c.nodes[third].mqtt, ProtocolVersion::V311, "big-later", &[("big/kept", QoS::AtLeastOnce)]);
    assert_eq!(expect_publish(&mut later).payload, bytes(1 << 20), "the retained message, from another node");
    let leader_id = c.status(leader)["node_id"].clone();
    assert_eq!(
        (c.status(leader)["term"].clone(), c.status(other)["leader"].clone()),
        (term, leader_id),
        "the same leader, in the same term"
    );
}

/// An MQTT 5.0 CONNECT of `client_id` with a 300 s session.
fn lasting(client_id: &str, clean: bool) -> skein_codec::Connect {
    let mut p = connect_packet(skein_codec::ProtocolVersion::V5, client_id, clean);
    p.properties.session_expiry_interval = Some(300);
    p
}

/// Leaves on `node` a persistent session of `client_id`, subscribed to `filter` at QoS 1, its client gone.
fn leave_session(node: &Skein, client_id: &str, filter: &str) {
    use skein_codec::*;
    let (mut s, _) = Raw::connect(node.mqtt, lasting(client_id, true));
    s.send(&sub_packet(1, &[(filter, QoS::AtLeastOnce)]));
    assert!(matches!(s.recv(), Some(Packet::SubAck(_))));
    s.send(&Packet::Disconnect(Disconnect::default()));
    assert_eq!(s.recv(), None);
}

/// A queued message whose expiry interval passed while its session waited is deleted, also when the session moves
/// to another node [MQTT-3.3.2-5]; it used to arrive there with "1 s left".
#[test]
fn an_expired_queued_message_does_not_move_with_its_session() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let connect = |clean| lasting("mover", clean);
    leave_session(&c.nodes[0], "mover", "mv/#");
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V5, "mv-pub", true));
    for (id, (topic, expiry)) in [("mv/brief", 1), ("mv/lasting", 300)].into_iter().enumerate() {
        let Packet::Publish(mut p) = publish_owned(topic, QoS::AtLeastOnce, id as u16 + 1, "m") else { unreachable!() };
        p.properties.message_expiry_interval = Some(expiry);
        publ.send(&Packet::Publish(p));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    }
    // Past "brief"'s second: the interval is what is tested.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (mut s, ack) = Raw::connect(c.nodes[1].mqtt, connect(false));
    assert!(ack.session_present);
    let got: Vec<String> = until_marker(&mut s, "mv/zz").into_iter().map(|p| p.topic.to_string()).collect();
    assert_eq!(got, ["mv/lasting"], "only what has not expired moves with the session");
}

/// `$SYS` values are each node's own, as a single broker's are: a subscriber sees those of the node it is connected
/// to. Every node's used to reach every other node's subscribers, interleaved under the same topics, and the last
/// one to arrive was the retained value.
#[test]
fn sys_topics_show_the_node_a_client_is_connected_to() {
    let c = Nodes::start_with(3, &["--sys-interval", "1"]);
    let (_sub, out) = mosquitto_sub(&c.nodes[1], &["-t", "$SYS/broker/uptime", "-v"]);
    c.wait_node_routes(0, 2, 1);
    // Two rounds of node 2's own.
    out.wait_messages(2);
    let forwarded = |i: usize| c.status(i)["forwarded"].as_u64();
    assert_eq!((forwarded(0), forwarded(2)), (Some(0), Some(0)), "the other nodes sent theirs on");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(mosquitto_sub(&c.nodes[0], &["-t", "nothing"]));
    }
    // Node 1's count, not whichever node wrote last.
    let (_s, count) = mosquitto_sub(&c.nodes[0], &["-t", "$SYS/broker/clients/connected", "-v"]);
    count.wait_for(|l| l == "$SYS/broker/clients/connected 4");
}

/// An UNSUBSCRIBE right after a session resumed on another node holds: what the old node still relays for the
/// session while the routes change is matched against its subscriptions here. It used to be queued whatever the
/// client had unsubscribed from [MQTT-3.10.4-2].
#[test]
fn an_unsubscribe_right_after_a_session_moved_holds() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let connect = |clean| lasting("unsub", clean);
    leave_session(&c.nodes[0], "unsub", "un/#");
    let (mut s, ack) = Raw::connect(c.nodes[1].mqtt, connect(false));
    assert!(ack.session_present);
    s.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Properties::default(),
        filters: vec!["un/#".into()],
    }));
    assert!(matches!(s.recv(), Some(Packet::UnsubAck(a)) if a.reason_codes == [ReasonCode::Success]));
    s.send(&sub_packet(3, &[("mark", QoS::AtMostOnce)]));
    assert!(matches!(s.recv(), Some(Packet::SubAck(_))));
    for i in 0..3 {
        let (mut publ, _) =
            Raw::connect(c.nodes[i].mqtt, connect_packet(ProtocolVersion::V5, &format!("un-pub{i}"), true));
        publ.send(&publish_owned("un/x", QoS::AtLeastOnce, 1, format!("from node {}", i + 1)));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    }
    // Acknowledged, so taken (and queued, were it still subscribed) before this.
    s.send(&publish("mark", QoS::AtMostOnce, 0, b"end"));
    let p = expect_publish(&mut s);
    assert_eq!(p.topic, "mark", "{:?} came after the UNSUBACK", p.payload);
}

#[test]
fn a_fourth_node_joins_through_any_member_as_a_learner() {
    let mut c = Nodes::start(3);
    // It names one member only, not the seed list.
    c.add_node(1);
    let status = c.status(0);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{status}");
    let role = members.iter().find(|m| m["id"] == 4).map(|m| m["role"].clone());
    assert_eq!(role, Some(serde_json::json!("learner")), "three voters, the fourth learns: {status}");
    // And it is part of the one broker.
    delivers_across(&c, 0, &c.nodes[3], 4, "j/x", "to the newcomer");

    // `skein cluster status` shows it; `skein cluster leave` takes it out and stops it.
    let fourth_http = c.nodes[3].http.unwrap().to_string();
    let status = Command::new(skein_bin()).args(["cluster", "--http", &fourth_http, "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && text.contains("learner") && text.contains("leader"), "{text}");
    let (_watch, _) = mosquitto_sub(&c.nodes[3], &["-t", "j/#"]);
    c.wait_node_routes(0, 4, 1);
    let leave = Command::new(skein_bin()).args(["cluster", "--http", &fourth_http, "leave"]).output().unwrap();
    assert!(leave.status.success(), "{}", String::from_utf8_lossy(&leave.stderr));
    let mut fourth = c.nodes.pop().unwrap();
    assert_eq!(fourth.stop(), Some(0), "the node shuts down after leaving");
    let status = c.status(0);
    assert_eq!(status["members"].as_array().map(|m| m.len()), Some(3), "{status}");
    c.wait_node_routes(0, 4, 0);

    // Started again from the same data dir, it is not a member by its own Raft log's end: it asks to be added
    // again, and is once more part of the one broker.
    let back = c.spawn(3, &c.cluster_addrs[1].clone());
    wait_ready(back.http.unwrap());
    c.nodes.push(back);
    c.nodes[3].wait_log("asking the cluster to add this node again");
    let status = c.status(0);
    assert_eq!(status["members"].as_array().map(|m| m.len()), Some(4), "{status}");
    delivers_across(&c, 0, &c.nodes[3], 4, "j/y", "welcome back");
}

/// A voter gone for good is removed from another node (`skein cluster remove`): a learner takes its vote, so the
/// cluster keeps a quorum when one more voter fails. Without the removal, two of three voters would be gone.
#[test]
fn a_dead_voter_removed_from_another_node_leaves_its_vote_to_a_learner() {
    let mut c = Nodes::start(3);
    c.add_node(0);
    c.nodes[1].kill9();
    let remove = |id: &str| {
        Command::new(skein_bin())
            .args(["cluster", "--http", &c.nodes[0].http.unwrap().to_string(), "remove", id])
            .output()
            .unwrap()
    };
    let out = remove("2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let voters = |status: &serde_json::Value| -> Vec<u64> {
        let members = status["members"].as_array().cloned().unwrap_or_default();
        members.iter().filter(|m| m["role"] != "learner").filter_map(|m| m["id"].as_u64()).collect()
    };
    let status = c.status(0);
    assert_eq!(status["members"].as_array().map(|m| m.len()), Some(3), "{status}");
    let mut v = voters(&status);
    v.sort();
    assert_eq!(v, vec![1, 3, 4], "the learner took node 2's vote: {status}");
    // Removing it again, or the node itself, says why not.
    let again = remove("2");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not a member"));
    let itself = remove("1");
    assert!(!itself.status.success() && String::from_utf8_lossy(&itself.stderr).contains("use leave"));
    // One more voter fails: nodes 1 and 4 are still a majority of the three voters, so route changes go on.
    c.nodes[2].kill9();
    delivers_across(&c, 0, &c.nodes[3], 4, "quorum/x", "still one broker");
    // Node 2 was not gone for good after all: started from its data dir, whose log still makes it a voter, it asks
    // to be added again and comes back as a learner (the three votes are taken).
    c.nodes[1] = c.spawn(1, &c.cluster_addrs.join(","));
    wait_ready(c.nodes[1].http.unwrap());
    c.nodes[1].wait_log("asking the cluster to add this node again");
    let status = c.status(0);
    let role = status["members"].as_array().and_then(|m| m.iter().find(|m| m["id"] == 2)).map(|m| m["role"].clone());
    assert_eq!(role, Some(serde_json::json!("learner")), "{status}");
    delivers_across(&c, 0, &c.nodes[1], 2, "back/x", "returned");
}

#[test]
fn the_cluster_re_forms_after_all_nodes_restart() {
    let mut c = Nodes::start(3);
    let (sub, _) = mosquitto_sub(&c.nodes[2], &["-i", "stays", "-c", "-q", "1", "-t", "back/#", "-E"]);
    sub.wait_output(WAIT);
    c.wait_routes(0, 1);
    publish_to(&port_of(&c.nodes[1]), &["-t", "kept/t", "-r", "-q", "1", "-m", "retained across restarts"]);
    wait_retained(&c, 0, 1);
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0));
    }
    let join = c.cluster_addrs.join(",");
    c.nodes = (0..3).map(|i| c.spawn(i, &join)).collect();
    for n in &c.nodes {
        wait_ready(n.http.unwrap());
    }
    // The route of node 3's persistent session came back with it.
    c.wait_routes(0, 1);
    publish_to(&port_of(&c.nodes[0]), &["-t", "back/x", "-q", "1", "-m", "after restart"]);
    let (sub, out) = mosquitto_sub_started(&c.nodes[2], &["-i", "stays", "-c", "-q", "1", "-t", "back/#", "-C", "1"]);
    out.wait_for(|l| l == "after restart");
    sub.wait_output(WAIT);
    // The retained message published on node 2 is still there, on every node.
    for i in 0..3 {
        let (sub, out) = mosquitto_sub(&c.nodes[i], &["-t", "kept/#", "-v", "-C", "1"]);
        out.wait_for(|l| l == "kept/t retained across restarts");
        sub.wait_output(WAIT);
    }
}

#[test]
fn clients_behind_haproxy_see_one_broker() {
    let c = Nodes::start(3);
    let backends: Vec<_> = c.nodes.iter().map(|n| n.mqtt).collect();
    let (_lb, lb, _dir) = haproxy(&backends);
    let port = lb.port().to_string();
    // Round-robin: the subscriber and the publishers land on different nodes.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port, "-d", "-t", "lb/#", "-q", "1", "-v", "-C", "4"])
        .stdout(std::process::Stdio::piped());
    let mut p = Proc::spawn(&mut cmd);
    let stdout = p.0.as_mut().unwrap().stdout.take().unwrap();
    let log = std::sync::Arc::new(Log2::default());
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.push(line);
        }
        sink.close();
    });
    log.wait_for(|l| l.contains("received SUBACK"));
    for i in 0..3 {
        c.wait_routes(i, 1);
    }
    for i in 0..4 {
        publish_to(&port, &["-t", &format!("lb/{i}"), "-q", "1", "-m", &format!("via lb {i}")]);
    }
    log.wait_for(|l| l == "lb/3 via lb 3");
    p.wait_output(WAIT);
    assert_eq!(log.final_messages(), vec!["lb/0 via lb 0", "lb/1 via lb 1", "lb/2 via lb 2", "lb/3 via lb 3"]);
}

#[test]
fn kill_9_of_a_node_loses_no_acknowledged_message_and_clients_reconnect_through_haproxy() {
    use skein_codec::*;
    let mut c = Nodes::start_with(3, &["--node-timeout", "2"]);
    let backends: Vec<_> = c.nodes.iter().map(|n| n.mqtt).collect();
    let (_lb, lb, _dir) = haproxy(&backends);
    // Subscribers on the same filter on node 2 (survives) and node 3 (killed): routes name both.
    let (_doomed, _) = mosquitto_sub(&c.nodes[2], &["-t", "k/#", "-q", "1"]);
    let (_survivor, out) = mosquitto_sub(&c.nodes[1], &["-t", "k/#", "-q", "1", "-v"]);
    for node in [2, 3] {
        c.wait_node_routes(0, node, 1);
    }
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "k-pub", true));
    let mut acked = Vec::new();
    for i in 1..=60u16 {
        if i == 20 {
            c.nodes[2].kill9();
        }
        publ.send(&publish_owned("k/t", QoS::AtLeastOnce, i, format!("m{i}")));
        match publ.recv() {
            Some(Packet::PubAck(a)) if a.packet_id == i => acked.push(i),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    // Every acknowledged message reached the surviving subscriber.
    out.wait_for(|l| l == "k/t m60");
    let got = out.messages();
    for i in &acked {
        assert!(got.contains(&format!("k/t m{i}")), "m{i} was acknowledged but not delivered: {got:?}");
    }
    // The dead node's routes are purged, so publishes no longer wait on it.
    c.wait_node_routes(0, 3, 0);
    // New clients through the load balancer land on live nodes.
    for i in 0..4 {
        let (_, ack) = Raw::connect(lb, connect_packet(ProtocolVersion::V311, &format!("lb-{i}"), true));
        assert_eq!(ack.reason_code, ReasonCode::Success);
    }
}

/// A rolling update, as Kubernetes does it: each node in turn is stopped with SIGTERM and started again from its data,
/// while paho clients behind HAProxy publish and receive QoS 1 messages, reconnecting on their own. Every message
/// the publisher had acknowledged reaches the persistent subscriber, whose session follows it from node to node.
/// (Without the relay of a moved session, one or two messages a run were lost: the publisher's node still routed
/// them to the node the session had left, before the new node's route reached it.)
#[test]
fn a_rolling_restart_behind_haproxy_loses_no_acknowledged_message() {
    use std::io::{BufRead, Write};
    let mut c = Nodes::start_on_fixed_ports(3);
    let backends: Vec<std::net::SocketAddr> =
        c.mqtt_ports.iter().map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let (_lb, lb, _dir) = haproxy(&backends);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_rolling.py");
    let mut cmd = Command::new(crate::paho::python());
    cmd.arg(script).arg(lb.port().to_string());
    let mut clients = Proc::spawn(cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()));
    let mut input = clients.0.as_mut().and_then(|p| p.stdin.take()).expect("stdin");
    let out = std::sync::Arc::new(Log2::default());
    let sink = out.clone();
    let stdout = clients.stdout();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.push(line);
        }
    });
    out.wait_for(|l| l == "subscribed");
    let acked_so_far =
        || out.messages().iter().filter_map(|l| l.strip_prefix("acked ")?.parse::<u64>().ok()).max().unwrap_or(0);
    // The logs of the processes stopped on the way, for a failure's report.
    let mut stopped_logs = Vec::new();
    for i in 0..3 {
        // Traffic flows through the cluster as it is now, then node i goes and comes back.
        let before = acked_so_far();
        out.wait_for(|l| {
            l.strip_prefix("acked ").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= before + 25)
        });
        assert_eq!(c.nodes[i].stop(), Some(0), "node {} stops cleanly", i + 1);
        stopped_logs.push(format!("node {} before its restart:\n{}", i + 1, c.nodes[i].log()));
        c.nodes[i] = c.spawn(i, &c.cluster_addrs.join(","));
        wait_ready(c.nodes[i].http.unwrap());
    }
    let before = acked_so_far();
    out.wait_for(|l| l.strip_prefix("acked ").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= before + 25));
    writeln!(input, "stop").unwrap();
    let report = out.wait_for_within(|l| l.starts_with('{'), WAIT * 4).expect("the clients' report");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let numbers = |key: &str| -> Vec<u64> { v[key].as_array().unwrap().iter().filter_map(|n| n.as_u64()).collect() };
    let (acked, received) = (numbers("acked"), numbers("received"));
    let published = v["published"].as_u64().unwrap();
    assert_eq!(acked.len() as u64, published, "every message was acknowledged in the end: {v}");
    let missing: Vec<_> = acked.iter().filter(|n| !received.contains(n)).collect();
    if !missing.is_empty() {
        // Seen once in five full CI runs, not since: the nodes' own account of the moves, for whoever sees it next.
        let now = c.nodes.iter().enumerate().map(|(i, n)| format!("node {} after:\n{}", i + 1, n.log()));
        let logs: Vec<String> = stopped_logs.into_iter().chain(now).collect();
        panic!("acknowledged but never received: {missing:?} of {published}\n{v}\n{}", logs.join("\n"));
    }
    let sessions: Vec<bool> = v["sessions"].as_array().unwrap().iter().map(|s| s.as_bool().unwrap()).collect();
    assert!(sessions.len() > 1, "the subscriber's node went away at least once: {sessions:?}");
    assert!(sessions[1..].iter().all(|s| *s), "every reconnect found the session: {sessions:?}");
}

/// A persistent QoS 2 session moves from node 1 to node 2 while node 3 publishes without a pause: every message
/// arrives exactly once, in order. Node 1 relays what node 3 still sends it by the old routes, and node 2 takes each
/// message once, whichever way it came.
#[test]
fn a_session_moving_between_nodes_while_a_third_publishes_gets_each_qos_2_message_once() {
    let c = Nodes::start(3);
    move_while_a_third_publishes(&c, &[0, 1], 100);
    // The relay ends once the routes have changed: node 1's subscription and route go, and it relays no more.
    c.wait_node_routes(2, 1, 0);
    let metrics = http_get(c.nodes[0].http.unwrap(), "/metrics").expect("metrics").1;
    assert!(metrics.lines().any(|l| l == "skein_cluster_relaying_sessions 0"), "{metrics}");
}

/// The same session goes back and forth between two nodes, staying a moment on each, while both still relay for
/// it, and the node it moves to already routes its filter for another subscriber there: no message is lost or
/// comes twice. The publishing node sends each message to both nodes then, and the copy that reaches the new node
/// before the session's subscriptions is not the session's: the old node's relay must bring it.
#[test]
fn a_session_moving_back_and_forth_to_nodes_that_route_its_filter_anyway_gets_each_message_once() {
    use skein_codec::*;
    let c = Nodes::start(3);
    // Another subscriber of the filter on each of the two nodes, read all along.
    let readers: Vec<_> = [0, 1]
        .iter()
        .map(|&i| {
            let (mut other, _) =
                Raw::connect(c.nodes[i].mqtt, connect_packet(ProtocolVersion::V311, &format!("other-{i}"), true));
            other.send(&sub_packet(1, &[("mv/#", QoS::AtMostOnce)]));
            assert!(matches!(other.recv(), Some(Packet::SubAck(_))));
            std::thread::spawn(move || while other.recv().is_some() {})
        })
        .collect();
    c.wait_node_routes(2, 1, 1);
    c.wait_node_routes(2, 2, 1);
    move_while_a_third_publishes(&c, &[0, 1, 0, 1, 0, 1], 40);
    drop(c);
    readers.into_iter().for_each(|r| r.join().unwrap());
}

/// A QoS 2 message the session completed on its old node just before it moved does not come again on the new
/// node: the publishing node sent it to both (the new node routes its filter for another subscriber), and the new
/// node's copy was held up behind a large backlog in that node's forward stream, past the move. The new node takes
/// the session only once the other nodes' streams to it have delivered what was sent before (`Flush`).
#[test]
fn a_message_completed_on_the_old_node_does_not_come_again_after_the_move() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let (old_node, new_node, publishing) = (0, 1, 2);
    // On the new node: another subscriber of the session's filter, and a subscriber of a bulk topic that fills the
    // publishing node's stream to it. Both read all along.
    let readers: Vec<_> = [("other", "mv/#"), ("bulk", "bulk/#")]
        .into_iter()
        .map(|(id, filter)| {
            let (mut r, _) = Raw::connect(c.nodes[new_node].mqtt, connect_packet(ProtocolVersion::V311, id, true));
            r.send(&sub_packet(1, &[(filter, QoS::AtMostOnce)]));
            assert!(matches!(r.recv(), Some(Packet::SubAck(_))));
            std::thread::spawn(move || while r.recv().is_some() {})
        })
        .collect();
    let (mut sub, _) = Raw::connect(c.nodes[old_node].mqtt, connect_packet(ProtocolVersion::V311, "completer", false));
    sub.send(&sub_packet(1, &[("mv/#", QoS::ExactlyOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    c.wait_session_owner("completer", Some(old_node as u64 + 1));
    for node in [old_node as u64 + 1, new_node as u64 + 1] {
        c.wait_node_routes(publishing, node, if node == new_node as u64 + 1 { 2 } else { 1 });
    }
    // The backlog: 32 MiB for the new node alone, then the message, which reaches the old node at once.
    let (mut bulk, _) = Raw::connect(c.nodes[publishing].mqtt, connect_packet(ProtocolVersion::V311, "bulker", true));
    let chunk = Bytes::from(vec![b'b'; 64 * 1024]);
    for i in 0..512u16 {
        bulk.send(&publish_owned(&format!("bulk/{i}"), QoS::AtMostOnce, 0, chunk.clone()));
    }
    let publisher_addr = c.nodes[publishing].mqtt;
    let publisher = std::thread::spawn(move || {
        let (mut p, _) = Raw::connect(publisher_addr, connect_packet(ProtocolVersion::V311, "once", true));
        for (id, payload) in [(1, "m"), (2, "end")] {
            p.send(&publish_owned("mv/t", QoS::ExactlyOnce, id, payload));
            assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == id));
            p.send(&Packet::PubRel(Ack::new(id)));
            assert!(matches!(p.recv(), Some(Packet::PubComp(a)) if a.packet_id == id));
        }
    });
    // Taken and completed on the old node.
    let Some(Packet::Publish(m)) = sub.recv() else { panic!("the message on the old node") };
    assert_eq!(&m.payload[..], b"m");
    sub.send(&Packet::PubRec(Ack::new(m.packet_id)));
    assert!(matches!(sub.recv(), Some(Packet::PubRel(a)) if a.packet_id == m.packet_id));
    sub.send(&Packet::PubComp(Ack::new(m.packet_id)));
    sub.send(&Packet::Disconnect(Disconnect::default()));
    assert_eq!(sub.recv(), None);
    let (mut sub, ack) =
        Raw::connect(c.nodes[new_node].mqtt, connect_packet(ProtocolVersion::V311, "completer", false));
    assert!(ack.session_present, "the session moved");
    // Everything up to the end marker: "m" must not be among it.
    let mut got = Vec::new();
    while got.last().is_none_or(|l| l != "end") {
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                sub.send(&Packet::PubRec(Ack::new(p.packet_id)));
            }
            Some(Packet::PubRel(a)) => sub.send(&Packet::PubComp(Ack::new(a.packet_id))),
            other => panic!("expected PUBLISH or PUBREL, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(got, ["end"], "the message completed on the old node came again");
    publisher.join().unwrap();
    drop(bulk);
    drop(c);
    readers.into_iter().for_each(|r| r.join().unwrap());
}

/// A persistent QoS 2 session of a raw client starts on `path[0]` and moves along `path` (node indices), taking
/// `per_stay` messages on each node before it moves on, while node 3 publishes QoS 2 to it without a pause, one
/// flow at a time. Checks that every message came exactly once and in order.
fn move_while_a_third_publishes(c: &Nodes, path: &[usize], per_stay: usize) {
    use skein_codec::*;
    let (mut sub, _) = Raw::connect(c.nodes[path[0]].mqtt, connect_packet(ProtocolVersion::V311, "mover", false));
    sub.send(&sub_packet(1, &[("mv/#", QoS::ExactlyOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    c.wait_session_owner("mover", Some(path[0] as u64 + 1));
    c.wait_node_routes(2, path[0] as u64 + 1, 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher_addr = c.nodes[2].mqtt;
    let stopping = stop.clone();
    // QoS 2, one at a time, each flow complete before the next: numbers 1, 2, ... then "end".
    let publisher = std::thread::spawn(move || {
        let (mut p, _) = Raw::connect(publisher_addr, connect_packet(ProtocolVersion::V311, "steady", true));
        let flow = |p: &mut Raw, id: u16, payload: String| {
            p.send(&publish_owned("mv/t", QoS::ExactlyOnce, id, payload));
            assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == id));
            p.send(&Packet::PubRel(Ack::new(id)));
            assert!(matches!(p.recv(), Some(Packet::PubComp(a)) if a.packet_id == id));
        };
        let mut n = 0u32;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            flow(&mut p, (n % 60_000 + 1) as u16, n.to_string());
        }
        flow(&mut p, 60_001, "end".to_string());
        n
    });
    // The receiving side of QoS 2 as a client keeps it across connections: a message counts when its PUBLISH first
    // comes; one sent again before its PUBREL (its PUBREC was not taken) is the same message.
    let mut unreleased = std::collections::HashSet::new();
    let mut receive = |raw: &mut Raw, got: &mut Vec<String>, until: &dyn Fn(&[String]) -> bool| {
        while !until(got) {
            match raw.recv() {
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.qos, QoS::ExactlyOnce);
                    if unreleased.insert(p.packet_id) {
                        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                    }
                    raw.send(&Packet::PubRec(Ack::new(p.packet_id)));
                }
                Some(Packet::PubRel(a)) => {
                    unreleased.remove(&a.packet_id);
                    raw.send(&Packet::PubComp(Ack::new(a.packet_id)));
                }
                other => panic!("expected PUBLISH or PUBREL, got {other:?} after {} messages", got.len()),
            }
        }
    };
    let mut got = Vec::new();
    for &next in &path[1..] {
        let from = got.len();
        receive(&mut sub, &mut got, &|g: &[String]| g.len() >= from + per_stay);
        sub.send(&Packet::Disconnect(Disconnect::default()));
        drop(sub);
        // The session moves while the messages keep coming.
        let (moved, ack) = Raw::connect(c.nodes[next].mqtt, connect_packet(ProtocolVersion::V311, "mover", false));
        assert!(ack.session_present, "the session moved to node {}", next + 1);
        sub = moved;
    }
    let from = got.len();
    receive(&mut sub, &mut got, &|g: &[String]| g.len() >= from + per_stay);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().unwrap();
    receive(&mut sub, &mut got, &|g: &[String]| g.last().is_some_and(|l| l == "end"));
    let numbers: Vec<u32> = got[..got.len() - 1].iter().map(|s| s.parse().unwrap()).collect();
    let expected: Vec<u32> = (1..=published).collect();
    if numbers != expected {
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<_> = numbers.iter().filter(|n| !seen.insert(**n)).collect();
        let missing: Vec<_> = expected.iter().filter(|n| !seen.contains(n)).collect();
        let logs: Vec<String> =
            c.nodes.iter().enumerate().map(|(i, n)| format!("node {}:\n{}", i + 1, n.log())).collect();
        panic!(
            "{published} published; repeated {twice:?}, missing {missing:?}, order {numbers:?}\n{}",
            logs.join("\n")
        );
    }
}

#[test]
fn the_same_client_id_through_two_nodes_closes_the_older_connection() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let (mut first, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V5, "roamer", true));
    let (mut second, ack) = Raw::connect(c.nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "roamer", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        first.recv_until_closed(),
        vec![Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))],
        "the older connection, on another node, is closed with 0x8E"
    );
    second.send(&Packet::PingReq);
    assert_eq!(second.recv(), Some(Packet::PingResp));
}

#[test]
fn many_client_ids_moving_at_once_each_close_their_older_connection() {
    use skein_codec::*;
    // Clean-session connects are told to the other nodes in batches: every one of them must still arrive.
    let c = Nodes::start(3);
    let ids: Vec<String> = (0..60).map(|i| format!("mover-{i}")).collect();
    let mut first: Vec<Raw> =
        ids.iter().map(|id| Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V5, id, true)).0).collect();
    let second: Vec<Raw> =
        ids.iter().map(|id| Raw::connect(c.nodes[2].mqtt, connect_packet(ProtocolVersion::V5, id, true)).0).collect();
    for (id, old) in ids.iter().zip(&mut first) {
        assert_eq!(
            old.recv_until_closed(),
            vec![Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))],
            "{id}: the older connection is closed with 0x8E"
        );
    }
    drop(second);
}

#[test]
fn a_will_fires_once_on_every_node_when_its_client_drops_or_moves() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let with_will = |id: &str, payload: &'static [u8]| {
        let mut p = connect_packet(ProtocolVersion::V311, id, true);
        p.will = Some(Will {
            topic: "wills/gone".into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        });
        p
    };
    let mut subs: Vec<Raw> = [1, 2]
        .iter()
        .map(|&i| {
            raw_subscriber(
                c.nodes[i].mqtt,
                ProtocolVersion::V311,
                &format!("watcher-{i}"),
                &[("wills/#", QoS::AtLeastOnce)],
            )
        })
        .collect();
    // Every node publishes here (the wills on node 1, a marker from each below): each must know both watchers.
    for i in 0..3 {
        for node in [2, 3] {
            c.wait_node_routes(i, node, 1);
        }
    }
    // Dropped without DISCONNECT on node 1; then one that moves from node 1 to node 2 (its old connection is taken
    // over, which ends its clean session: its will goes too [MQTT-3.1.2-8]).
    let (dropped, _) = Raw::connect(c.nodes[0].mqtt, with_will("dropper", b"dropped"));
    drop(dropped);
    let (mut moved, _) = Raw::connect(c.nodes[0].mqtt, with_will("mover", b"moved"));
    let (mut new, _) = Raw::connect(c.nodes[1].mqtt, connect_packet(ProtocolVersion::V311, "mover", true));
    assert_eq!(moved.recv_until_closed(), vec![], "a 3.1.1 connection taken over is closed");
    let next = |sub: &mut Raw| {
        let p = expect_publish(sub);
        if p.qos != QoS::AtMostOnce {
            sub.send(&Packet::PubAck(Ack::new(p.packet_id)));
        }
        String::from_utf8_lossy(&p.payload).to_string()
    };
    let mut got = vec![Vec::new(), Vec::new()];
    for (sub, got) in subs.iter_mut().zip(&mut got) {
        while !(got.iter().any(|w| w == "dropped") && got.iter().any(|w| w == "moved")) {
            got.push(next(sub));
        }
    }
    // Then a marker from every node: a second copy of a will from any node would come before that node's marker.
    for (i, node) in c.nodes.iter().enumerate() {
        let (mut m, _) = Raw::connect(node.mqtt, connect_packet(ProtocolVersion::V311, &format!("marker-{i}"), true));
        m.send(&publish("wills/marker", QoS::AtLeastOnce, 1, b"end"));
        assert!(matches!(m.recv(), Some(Packet::PubAck(_))));
    }
    for (i, (sub, got)) in subs.iter_mut().zip(&mut got).enumerate() {
        let mut markers = 0;
        while markers < 3 {
            match next(sub) {
                end if end == "end" => markers += 1,
                other => got.push(other),
            }
        }
        got.sort();
        assert_eq!(*got, vec!["dropped", "moved"], "watcher on node {}: each will once", i + 2);
    }
    new.send(&Packet::PingReq);
    assert_eq!(new.recv(), Some(Packet::PingResp));
}

#[test]
fn a_persistent_session_resumes_on_another_node_with_its_queued_messages() {
    let c = Nodes::start(3);
    // Subscribe on node 1 with a persistent session, then leave.
    let (sub, _) = mosquitto_sub(&c.nodes[0], &["-i", "nomad", "-c", "-q", "1", "-t", "nomad/#", "-E"]);
    sub.wait_output(WAIT);
    c.wait_routes(2, 1);
    // Every node's registry knows where the session is.
    let first = c.wait_session_owner("nomad", Some(1)).unwrap();
    // Messages published on node 3 queue in the session on node 1.
    for i in 0..3 {
        publish_to(&port_of(&c.nodes[2]), &["-t", "nomad/x", "-q", "1", "-m", &format!("queued {i}")]);
    }
    // The client comes back through node 2: the session moves there, queued messages and subscription with it.
    let (sub, out) =
        mosquitto_sub_started(&c.nodes[1], &["-i", "nomad", "-c", "-q", "1", "-t", "nomad/#", "-C", "4", "-v"]);
    out.wait_for(|l| l == "nomad/x queued 2");
    // The route now points at node 2: a new message reaches the session there.
    c.wait_node_routes(2, 2, 1);
    publish_to(&port_of(&c.nodes[2]), &["-t", "nomad/y", "-q", "1", "-m", "after the move"]);
    out.wait_for(|l| l == "nomad/y after the move");
    sub.wait_output(WAIT);
    assert_eq!(
        out.messages(),
        vec!["nomad/x queued 0", "nomad/x queued 1", "nomad/x queued 2", "nomad/y after the move"]
    );
    // Node 1 no longer routes for it; the registry moved the session to node 2, a newer claim.
    c.wait_node_routes(2, 1, 0);
    let moved = c.wait_session_owner("nomad", Some(2)).unwrap();
    assert!(moved > first, "epoch {moved} after {first}");
    // Node 2 asked the node the registry named for the session, and no other.
    assert_eq!(
        (c.status(0)["takeovers_answered"].as_u64(), c.status(2)["takeovers_answered"].as_u64()),
        (Some(1), Some(0))
    );
    let out = Command::new(skein_bin())
        .args(["cluster", "--http", &c.nodes[0].http.unwrap().to_string(), "client", "nomad"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("skein cluster client prints JSON");
    assert_eq!((v["client_id"].as_str(), v["node"].as_u64()), (Some("nomad"), Some(2)));
    // A clean-session connect of the id on node 1 ends the session: it leaves the registry everywhere.
    publish_to(&port_of(&c.nodes[0]), &["-i", "nomad", "-t", "nomad/z", "-m", "clean"]);
    c.wait_session_owner("nomad", None);
    assert_eq!(c.status(2)["sessions"], 0);
}

/// A node stopped with SIGTERM (a rolling restart) keeps answering its peers while the clients it closed resume
/// their persistent sessions elsewhere: the session, and what was queued in it meanwhile, moves with its client.
#[test]
fn a_stopping_node_hands_the_persistent_sessions_of_its_clients_to_where_they_reconnect() {
    let mut c = Nodes::start(3);
    let (mut sub, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "roamer", false));
    sub.send(&sub_packet(1, &[("roam/#", QoS::AtLeastOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    c.wait_routes(1, 1);
    c.wait_session_owner("roamer", Some(1));
    c.nodes[0].terminate();
    assert_eq!(sub.recv(), None, "the stopping node closes its clients");
    // A message for it while it is away waits in its session on the stopping node.
    mosquitto_pub(&c.nodes[1], &["-t", "roam/x", "-q", "1", "-m", "while moving"]);
    // It comes back through node 3 and finds its session there, with that message.
    let (mut sub, ack) = Raw::connect(c.nodes[2].mqtt, connect_packet(ProtocolVersion::V311, "roamer", false));
    assert!(ack.session_present, "the session moved from the stopping node");
    let p = expect_publish(&mut sub);
    assert_eq!((&*p.topic, &p.payload[..]), ("roam/x", &b"while moving"[..]));
    sub.send(&Packet::PubAck(Ack::new(p.packet_id)));
    // The stopping node ends once its session has gone, without waiting out drain_timeout.
    c.nodes[0].wait_log("every persistent session moved");
    assert_eq!(c.nodes[0].stop(), Some(0));
}

/// A leader stopped with SIGTERM hands its leadership to another voter before it closes its clients, so that the
/// nodes they reconnect through have a leader to register their sessions with; the others do not wait for it to be
/// gone and then out an election timeout.
#[test]
fn a_stopping_leader_hands_its_leadership_on_before_it_closes_its_clients() {
    // A long drain: the stopping node stays up until its client's session has moved, which the test decides.
    let mut c = Nodes::start_with(3, &["--drain-timeout", "120"]);
    let leader = c.status(0)["leader"].as_u64().expect("a leader");
    let l = leader as usize - 1;
    let (mut sub, _) = Raw::connect(c.nodes[l].mqtt, connect_packet(ProtocolVersion::V311, "anchor", false));
    sub.send(&sub_packet(1, &[("anchor/#", QoS::AtLeastOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    c.wait_session_owner("anchor", Some(leader));
    c.nodes[l].terminate();
    assert_eq!(sub.recv(), None, "the stopping node closes its clients");
    c.nodes[l].wait_log("closing connections");
    let log = c.nodes[l].log();
    let handed = log.find("leadership handed on").unwrap_or_else(|| panic!("no hand-off before closing:\n{log}"));
    assert!(handed < log.find("closing connections").expect("closing logged"), "{log}");
    // The others name the new leader while the old one is still draining.
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let deadline = std::time::Instant::now() + WAIT;
    let successor = loop {
        let seen: Vec<_> = others.iter().map(|i| c.status(*i)["leader"].as_u64()).collect();
        if let Some(s) = seen[0].filter(|s| *s != leader && seen.iter().all(|x| *x == Some(*s))) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no new leader among the others: {seen:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(c.nodes[l].running(), "the new leader came only after the old one was gone");
    c.nodes[successor as usize - 1].wait_log("standing for election: the leader is stopping");
    // A session registration needs the leader: the client resumes through another node, and the old one ends.
    let (_sub, ack) = Raw::connect(c.nodes[others[0]].mqtt, connect_packet(ProtocolVersion::V311, "anchor", false));
    assert!(ack.session_present, "the session moved from the stopping node");
    c.nodes[l].wait_log("every persistent session moved");
    assert_eq!(c.nodes[l].stop(), Some(0));
}

/// A node sends a batch again when the connection its acknowledgement should have come on is gone; if the node that
/// took the batch restarted meanwhile, it must still take it once. Here the test is the sending node: it forwards a
/// QoS 1 message for a persistent session that is away, the receiving node is killed after acknowledging it, and
/// the same batch comes again once it is back.
#[test]
fn a_forwarded_batch_sent_again_after_the_receiving_node_restarted_is_delivered_once() {
    use skein_cluster::proto::ForwardBatch;
    let mut c = Nodes::start(1);
    let keeper = ["-i", "keeper", "-c", "-q", "1", "-t", "dup/#"];
    let (sub, _) = mosquitto_sub(&c.nodes[0], &[&keeper[..], &["-E"]].concat());
    sub.wait_output(WAIT);
    let mut packed = bytes::BytesMut::new();
    let publish = skein_codec::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "dup/x".into(),
        packet_id: 1,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"once"),
    };
    let message = skein_broker::message::Message::from_publish(publish, None);
    skein_cluster::handover::pack_message(&message, &[], 0, false, &mut packed);
    let batch = ForwardBatch {
        batch_id: 1,
        from_node: 7,
        packed: packed.freeze(),
        epoch: 42,
        routes_index: 0,
        ids: Default::default(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forward = |addr: &str| {
        rt.block_on(async {
            let mut client = skein_cluster::network::dedicated_client(addr).unwrap();
            let acks = client.forward(tokio_stream::iter(vec![batch.clone()])).await.expect("forward stream");
            let ack = tokio::time::timeout(WAIT, acks.into_inner().message()).await.expect("an acknowledgement");
            ack.expect("no stream error").expect("one acknowledgement").batch_id
        })
    };
    assert_eq!(forward(&c.cluster_addrs[0]), 1);
    // Acknowledged, so stored: killed now, the node keeps the message.
    c.nodes[0].kill9();
    c.nodes[0] = c.spawn(0, &c.cluster_addrs.join(","));
    wait_ready(c.nodes[0].http.unwrap());
    assert_eq!(forward(&c.cluster_addrs[0]), 1, "acknowledged again");
    // A message published after both: whatever was queued before it comes first.
    mosquitto_pub(&c.nodes[0], &["-t", "dup/end", "-q", "1", "-m", "end"]);
    let (sub, out) = mosquitto_sub_started(&c.nodes[0], &[&keeper[..], &["-v", "-C", "2"]].concat());
    sub.wait_output(WAIT);
    assert_eq!(out.wait_messages(2), ["dup/x once", "dup/end end"]);
}

/// A node down for longer than the node timeout loses its sessions to the cluster; a session of it the client has
/// meanwhile started afresh elsewhere must not live on there when it comes back from its store (its subscription
/// would keep drawing copies of messages nobody reads).
#[test]
fn a_session_left_behind_on_a_node_that_was_away_ends_when_it_returns() {
    let mut c = Nodes::start_with(3, &["--node-timeout", "1"]);
    let drifter = ["-i", "drifter", "-c", "-q", "1", "-t", "drift/#"];
    let (sub, _) = mosquitto_sub(&c.nodes[0], &[&drifter[..], &["-E"]].concat());
    sub.wait_output(WAIT);
    c.wait_session_owner("drifter", Some(1));
    c.wait_node_routes(2, 1, 1);
    c.nodes[0].kill9();
    // The others purge node 1: its route and its session are gone from the registry.
    c.wait_node_routes(2, 1, 0);
    let deadline = std::time::Instant::now() + WAIT;
    while c.session_owner(1, "drifter").is_some() || c.session_owner(2, "drifter").is_some() {
        assert!(std::time::Instant::now() < deadline, "node 1's session never purged: {}", c.status(1));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The client comes back through node 2 and gets a new session there.
    let (sub, _) = mosquitto_sub(&c.nodes[1], &[&drifter[..], &["-E"]].concat());
    sub.wait_output(WAIT);
    // Node 2 gives up telling node 1 to close the id once node 1 has been silent for the node timeout.
    c.nodes[1].wait_log("did not take connect notices in time");
    c.nodes[0] = c.spawn(0, &c.cluster_addrs.join(","));
    wait_ready(c.nodes[0].http.unwrap());
    // Node 1 returns holding its old copy from its store; it ends the session the registry gave to node 2, and
    // the route that session had goes.
    c.wait_session_owner("drifter", Some(2));
    let deadline = std::time::Instant::now() + WAIT * 2;
    while c.status(2)["routes_per_node"]["1"].as_u64() != Some(0)
        || !c.nodes[0].log().contains("belongs to another node")
    {
        assert!(std::time::Instant::now() < deadline, "node 1 kept the session: {}", c.status(2));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    c.wait_session_owner("drifter", Some(2));
    // One copy of a message, on node 2.
    publish_to(&port_of(&c.nodes[2]), &["-t", "drift/x", "-q", "1", "-m", "once"]);
    let (sub, out) = mosquitto_sub_started(&c.nodes[1], &[&drifter[..], &["-v", "-C", "1"]].concat());
    out.wait_for(|l| l == "drift/x once");
    sub.wait_output(WAIT);
}

#[test]
fn a_shared_subscription_spreads_across_nodes_each_message_once() {
    let c = Nodes::start(3);
    let (_m1, one) = mosquitto_sub(&c.nodes[0], &["-t", "$share/g/sh/#", "-q", "1", "-v"]);
    let (_m2, two) = mosquitto_sub(&c.nodes[1], &["-t", "$share/g/sh/#", "-q", "1", "-v"]);
    // Node 3 must know both nodes serve the group before it publishes.
    for node in [1, 2] {
        c.wait_node_routes(2, node, 1);
    }
    for i in 0..10 {
        publish_to(&port_of(&c.nodes[2]), &["-t", "sh/t", "-q", "1", "-m", &format!("m{i}")]);
    }
    let deadline = std::time::Instant::now() + WAIT;
    while one.messages().len() + two.messages().len() < 10 {
        assert!(std::time::Instant::now() < deadline, "got {:?} and {:?}", one.messages(), two.messages());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut all: Vec<String> = one.messages().into_iter().chain(two.messages()).collect();
    all.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("sh/t m{i}")).collect();
    want.sort();
    assert_eq!(all, want, "every message once, across the group's two nodes");
    assert_eq!((one.messages().len(), two.messages().len()), (5, 5), "taken in turn");
}

/// A node that dies still has its routes until the node timeout; meanwhile a shared group it served with another
/// node goes to the members that are there, rather than waiting for it (and being lost if it stays away).
#[test]
fn a_shared_group_skips_a_node_that_cannot_be_reached() {
    use skein_codec::*;
    let mut c = Nodes::start_with(3, &["--node-timeout", "60"]);
    let (_m2, two) = mosquitto_sub(&c.nodes[1], &["-t", "$share/g/away/#", "-q", "1", "-v"]);
    let (_m3, three) = mosquitto_sub(&c.nodes[2], &["-t", "$share/g/away/#", "-q", "1", "-v"]);
    for node in [2, 3] {
        c.wait_node_routes(0, node, 1);
    }
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "pub", true));
    // Two first, one to each node: node 1's streams to both are open.
    for i in 1..=2u16 {
        publ.send(&publish_owned("away/t", QoS::AtLeastOnce, i, format!("before {i}")));
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i))));
    }
    assert_eq!((two.wait_messages(1).len(), three.wait_messages(1).len()), (1, 1), "taken in turn");
    c.nodes[2].kill9();
    let deadline = std::time::Instant::now() + WAIT;
    while c.status(0)["unreachable"] != serde_json::json!([3]) {
        assert!(std::time::Instant::now() < deadline, "node 3 never seen as unreachable: {}", c.status(0));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for i in 3..=12u16 {
        publ.send(&publish_owned("away/t", QoS::AtLeastOnce, i, format!("after {i}")));
    }
    for i in 3..=12u16 {
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i))), "acknowledged without waiting for node 3");
    }
    let got = two.wait_messages(11);
    for i in 3..=12 {
        assert!(got.contains(&format!("away/t after {i}")), "after {i} missing: {got:?}");
    }
    assert_eq!(c.status(0)["forward_pending"], 0, "nothing waits for node 3: {}", c.status(0));
}

/// A shared group's member that leaves takes nothing with it: until every node's table knows, the node it was on
/// is still given the group's messages, and hands them to the group's members elsewhere. They used to be lost,
/// acknowledged and uncounted, for the few milliseconds the route's removal took.
#[test]
fn a_shared_group_loses_nothing_while_a_members_leaving_reaches_the_other_nodes() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let args = ["-t", "$share/g/sl/#", "-q", "1", "-v"];
    let (_m1, one) = mosquitto_sub(&c.nodes[0], &args);
    let (_m2, two) = mosquitto_sub(&c.nodes[1], &args);
    let mut leaving =
        raw_subscriber(c.nodes[2].mqtt, ProtocolVersion::V5, "leaving", &[("$share/g/sl/#", QoS::AtLeastOnce)]);
    for i in 0..3 {
        for node in 1..=3 {
            c.wait_node_routes(i, node, 1);
        }
    }
    let mut publishers: Vec<Raw> = (0..3)
        .map(|i| Raw::connect(c.nodes[i].mqtt, connect_packet(ProtocolVersion::V5, &format!("sl-pub{i}"), true)).0)
        .collect();
    // Gone once its node has closed the connection: its subscription is no more there, while the route's removal
    // is still on its way to the other nodes.
    leaving.send(&Packet::Disconnect(Disconnect::default()));
    assert_eq!(leaving.recv(), None);
    const N: u16 = 30;
    // All at once, into the moment the route's removal takes.
    for id in 1..=N {
        publishers[usize::from(id) % 3].send(&publish_owned("sl/t", QoS::AtLeastOnce, id, format!("m{id}")));
    }
    for publ in &mut publishers {
        for _ in 0..N / 3 {
            assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
        }
    }
    let deadline = std::time::Instant::now() + WAIT;
    while one.messages().len() + two.messages().len() < usize::from(N) {
        assert!(std::time::Instant::now() < deadline, "got {:?} and {:?}", one.messages(), two.messages());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut got: Vec<String> = one.messages().into_iter().chain(two.messages()).collect();
    got.sort();
    let mut want: Vec<String> = (1..=N).map(|i| format!("sl/t m{i}")).collect();
    want.sort();
    assert_eq!(got, want, "every acknowledged message, once, to the members left");
}

#[test]
fn losing_quorum_stops_route_changes_never_local_delivery() {
    let mut c = Nodes::start_with(3, &["--node-timeout", "2"]);
    let keeper = ["-i", "keeper", "-c", "-q", "1", "-t", "k/#"];
    let (sub, _) = mosquitto_sub(&c.nodes[0], &[&keeper[..], &["-E"]].concat());
    sub.wait_output(WAIT);
    c.wait_session_owner("keeper", Some(1));
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    // Node 1 alone has no quorum; a subscription made now still gets local messages at once.
    let (sub, out) = mosquitto_sub(&c.nodes[0], &["-t", "q/#", "-q", "1", "-v", "-C", "2"]);
    publish_to(&port_of(&c.nodes[0]), &["-t", "q/x", "-q", "1", "-m", "alone"]);
    out.wait_for(|l| l == "q/x alone");
    // A persistent session resumes without quorum too (its claim waits for the log; the connect does not), with
    // what was queued for it meanwhile.
    publish_to(&port_of(&c.nodes[0]), &["-t", "k/x", "-q", "1", "-m", "kept"]);
    let (back, kept) = mosquitto_sub_started(&c.nodes[0], &[&keeper[..], &["-v", "-C", "1"]].concat());
    kept.wait_for(|l| l == "k/x kept");
    back.wait_output(WAIT);
    // A clean connect of the id ends that session, and with it its route.
    publish_to(&port_of(&c.nodes[0]), &["-i", "keeper", "-t", "k/end", "-m", "end"]);
    // The other two come back; the cluster is whole again and routes flow between nodes.
    let join = c.cluster_addrs.join(",");
    c.nodes[1] = c.spawn(1, &join);
    c.nodes[2] = c.spawn(2, &join);
    for n in &c.nodes {
        wait_ready(n.http.unwrap());
    }
    let (sub2, out2) = mosquitto_sub(&c.nodes[1], &["-t", "q/#", "-q", "1", "-v", "-C", "1"]);
    c.wait_node_routes(0, 2, 1);
    c.wait_node_routes(1, 1, 1);
    publish_to(&port_of(&c.nodes[0]), &["-t", "q/y", "-q", "1", "-m", "together"]);
    out.wait_for(|l| l == "q/y together");
    out2.wait_for(|l| l == "q/y together");
    sub.wait_output(WAIT);
    sub2.wait_output(WAIT);
    // Node 1 never went down.
    assert_eq!(c.nodes[0].stop(), Some(0));
}

#[test]
fn peers_with_mutual_tls_form_a_cluster_and_strangers_cannot_join_until_their_certificates_are_replaced() {
    let pki = TestPki::new("skein test cluster CA");
    let flags = pki.flags();
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut c = Nodes::start_with(3, &extra);
    delivers_across(&c, 0, &c.nodes[1], 2, "tls/x", "over mutual TLS");
    // A node whose certificate another CA signed is refused by every member: its join attempts fail on the
    // handshake, and the members never list it.
    let stranger_pki = TestPki::new("some other CA");
    let stranger_flags = stranger_pki.flags();
    c.cluster_addrs.push(format!("127.0.0.1:{}", free_port()));
    c.dirs.push(tempfile::tempdir().unwrap());
    let mut args: Vec<String> = vec![
        "--node-id".into(),
        "9".into(),
        "--cluster".into(),
        c.cluster_addrs[3].clone(),
        "--join".into(),
        c.cluster_addrs[0].clone(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--log-level".into(),
        "info,skein_cluster=debug".into(),
    ];
    args.extend(stranger_flags);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let stranger = Skein::start_in(c.dirs[3].path(), &arg_refs);
    let refused = stranger.wait_log("seed did not answer");
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("transport error"), "{refused}");
    assert_eq!(http_get(stranger.http.unwrap(), "/readyz").map(|r| r.0), Some(503));
    let members = c.status(0)["members"].as_array().map(|m| m.len());
    assert_eq!(members, Some(3), "the stranger is not a member");
    // Its files are replaced in place by the cluster CA's (as a renewal would replace them): it reads them again
    // while running, as a client and as a server, and joins.
    for f in ["ca.pem", "node.pem", "node.key"] {
        let new = stranger_pki.dir.path().join(format!("{f}.new"));
        std::fs::copy(pki.path(f), &new).unwrap();
        std::fs::rename(&new, stranger_pki.path(f)).unwrap();
    }
    stranger.wait_log("cluster TLS certificates reloaded");
    wait_ready(stranger.http.unwrap());
    let members = c.status(0)["members"].as_array().map(|m| m.len());
    assert_eq!(members, Some(4), "the node with renewed certificates is a member");
    delivers_across(&c, 0, &stranger, 9, "renewed/x", "welcome");
    for n in &mut c.nodes {
        assert_eq!(n.stop(), Some(0));
    }
}

#[test]
fn a_shared_member_that_leaves_hands_its_messages_to_the_group_on_another_node() {
    use skein_codec::*;
    let c = Nodes::start(3);
    // A member on node 1 that will read and never acknowledge; one on node 2 that keeps; a plain subscriber on
    // node 2 that must not see anything twice.
    let member = |node: usize, id: &str, filter: &str| {
        let (mut raw, _) = Raw::connect(c.nodes[node].mqtt, connect_packet(ProtocolVersion::V311, id, true));
        raw.send(&sub_packet(1, &[(filter, QoS::AtLeastOnce)]));
        assert!(matches!(raw.recv(), Some(Packet::SubAck(_))));
        raw
    };
    let mut leaves = member(0, "leaves", "$share/g/job/#");
    let mut keeps = member(1, "keeps", "$share/g/job/#");
    let mut plain = member(1, "plain", "job/#");
    for node in [1, 2] {
        c.wait_node_routes(2, node, if node == 2 { 2 } else { 1 });
    }
    for i in 0..4 {
        publish_to(&port_of(&c.nodes[2]), &["-t", "job/x", "-q", "1", "-m", &format!("j{i}")]);
    }
    let take = |raw: &mut Raw, ack: bool| match raw.recv() {
        Some(Packet::Publish(p)) => {
            if ack {
                raw.send(&Packet::PubAck(Ack::new(p.packet_id)));
            }
            String::from_utf8_lossy(&p.payload).into_owned()
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    // In turn: two to each node's member. The one on node 1 goes away without acknowledging.
    let left: Vec<String> = (0..2).map(|_| take(&mut leaves, false)).collect();
    drop(leaves);
    let mut got: Vec<String> = (0..4).map(|_| take(&mut keeps, true)).collect();
    got.sort();
    assert_eq!(got, ["j0", "j1", "j2", "j3"], "its two ({left:?}) came over to node 2");
    let mut seen: Vec<String> = (0..4).map(|_| take(&mut plain, true)).collect();
    seen.sort();
    assert_eq!(seen, ["j0", "j1", "j2", "j3"]);
    plain.send(&Packet::PingReq);
    assert_eq!(plain.recv(), Some(Packet::PingResp), "the plain subscriber got each message once");
}

/// A QoS 1 publish waits for the node it went to; packets the client sends after it do not overtake it: their
/// answers (PINGRESP, the PUBACK of a message no other node needs, SUBACK) come after its PUBACK, in the order
/// the packets were sent [MQTT-4.6.0-2]. The receiving node is stopped (SIGSTOP) so the wait is long enough to see.
#[test]
fn answers_wait_in_order_behind_a_publish_another_node_has_not_taken_yet() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let mut far = raw_subscriber(c.nodes[1].mqtt, ProtocolVersion::V311, "far-sub", &[("far/#", QoS::AtLeastOnce)]);
    c.wait_node_routes(0, 2, 1);
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "hasty", true));

    // One message first: node 1's forward stream to node 2 is open before node 2 stops.
    publ.send(&publish("far/0", QoS::AtLeastOnce, 9, b"opens the stream"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(9))));
    assert_eq!(&*expect_publish(&mut far).topic, "far/0");
    let forwarded = |c: &Nodes| c.status(0)["forwarded"].as_u64().unwrap_or(0);
    let before = forwarded(&c);
    let paused = c.nodes[1].pause();
    publ.send(&publish("far/1", QoS::AtLeastOnce, 1, b"to node 2"));
    // Node 1 has read it and sent it on: what comes next is a read of its own.
    let deadline = std::time::Instant::now() + WAIT;
    while forwarded(&c) == before {
        assert!(std::time::Instant::now() < deadline, "node 1 never forwarded the publish");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    publ.send(&Packet::PingReq);
    publ.send(&publish("near/1", QoS::AtLeastOnce, 2, b"nobody elsewhere"));
    publ.send(&sub_packet(3, &[("near/#", QoS::AtMostOnce)]));
    // Nothing is answered while node 2 has not taken the first publish: a PINGRESP here would have overtaken it.
    publ.stream.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
    let mut early = [0u8; 1];
    match std::io::Read::read(&mut publ.stream, &mut early) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("an answer came before node 2 took the first publish: {other:?}"),
    }
    publ.stream.set_read_timeout(Some(WAIT)).unwrap();
    drop(paused);
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(1))));
    assert_eq!(publ.recv(), Some(Packet::PingResp));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(2))));
    assert!(matches!(publ.recv(), Some(Packet::SubAck(a)) if a.packet_id == 3));
    let p = expect_publish(&mut far);
    assert_eq!((&*p.topic, &p.payload[..]), ("far/1", &b"to node 2"[..]));
}

/// QoS 1 messages published while the node they are for is down wait for it, and every one reaches it when it
/// returns (QoS 0 ones are dropped, counted). Before, each waited as a batch of its own and only the first 64 batches were sent again: the rest were
/// acknowledged to the publisher after the node timeout without reaching the subscriber.
#[test]
fn messages_forwarded_while_a_node_is_down_all_reach_it_when_it_returns() {
    use skein_codec::*;
    let mut c = Nodes::start_with(3, &["--node-timeout", "30"]);
    let keeper = ["-i", "keeper", "-c", "-q", "1", "-t", "back/#"];
    let (sub, _) = mosquitto_sub(&c.nodes[1], &[&keeper[..], &["-E"]].concat());
    sub.wait_output(WAIT);
    c.wait_node_routes(0, 2, 1);
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "patient", true));
    // One message first: node 1's forward stream to node 2 is open before node 2 goes.
    publ.send(&publish("back/t", QoS::AtLeastOnce, 1000, b"m0"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(1000))));
    c.nodes[1].kill9();
    // QoS 0 messages meanwhile are dropped, counted: nobody waits for them, and they would pile up.
    for i in 0..50 {
        publ.send(&publish_owned("back/t", QoS::AtMostOnce, 0, format!("q0 {i}")));
    }
    let deadline = std::time::Instant::now() + WAIT;
    while c.status(0)["forward_failures"].as_u64() != Some(50) {
        assert!(std::time::Instant::now() < deadline, "the QoS 0 messages were not dropped: {}", c.status(0));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    const N: u16 = 150;
    for i in 1..=N {
        publ.send(&publish_owned("back/t", QoS::AtLeastOnce, i, format!("m{i}")));
    }
    // All of them wait for node 2 (none is acknowledged meanwhile).
    let deadline = std::time::Instant::now() + WAIT;
    while c.status(0)["forward_pending"].as_u64() != Some(u64::from(N)) {
        assert!(std::time::Instant::now() < deadline, "the messages never queued for node 2: {}", c.status(0));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c.nodes[1] = c.spawn(1, &c.cluster_addrs.join(","));
    wait_ready(c.nodes[1].http.unwrap());
    for i in 1..=N {
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i))));
    }
    let status = c.status(0);
    assert_eq!(
        (status["forward_failures"].as_u64(), status["forward_pending"].as_u64()),
        (Some(50), Some(0)),
        "{status}"
    );
    let count = (N + 1).to_string();
    let (sub, out) = mosquitto_sub_started(&c.nodes[1], &[&keeper[..], &["-v", "-C", &count]].concat());
    let got = out.wait_messages(usize::from(N + 1));
    sub.wait_output(WAIT);
    for i in 0..=N {
        assert!(got.contains(&format!("back/t m{i}")), "m{i} was acknowledged but not delivered: {got:?}");
    }
}

/// A node that stops reading without closing its connections (stopped, or cut off by the network) holds up its
/// publishers' acknowledgements for the node timeout, no longer: they are then answered and the loss counted, and
/// once the node is back, messages reach it again. Before, they waited for as long as the connection stayed open.
#[test]
fn a_node_that_stops_reading_holds_acknowledgements_up_for_the_node_timeout_only() {
    use skein_codec::*;
    let c = Nodes::start_with(3, &["--node-timeout", "1"]);
    let mut far = raw_subscriber(c.nodes[1].mqtt, ProtocolVersion::V311, "far-sub", &[("stall/#", QoS::AtLeastOnce)]);
    c.wait_node_routes(0, 2, 1);
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "stuck", true));
    publ.send(&publish("stall/0", QoS::AtLeastOnce, 1, b"opens the stream"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(1))));
    assert_eq!(&*expect_publish(&mut far).topic, "stall/0");
    let paused = c.nodes[1].pause();
    publ.send(&publish("stall/1", QoS::AtLeastOnce, 2, b"never taken"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(2))));
    assert!(c.status(0)["forward_failures"].as_u64() >= Some(1), "{}", c.status(0));
    drop(paused);
    // Back: its routes return, and so do messages.
    c.wait_node_routes(0, 2, 1);
    let deadline = std::time::Instant::now() + WAIT;
    let mut id = 3;
    loop {
        publ.send(&publish("stall/2", QoS::AtLeastOnce, id, b"after"));
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(id))));
        let p = expect_publish(&mut far);
        if &*p.topic == "stall/2" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing reached node 2 after it came back");
        id += 1;
    }
}

/// A node that stopped reading comes back: of the batches sent to it, the ones older than the node timeout were
/// given up, and the younger ones are sent again on a new stream and delivered, once. Whether the node also reads
/// them from the old stream depends on whether the old stream's reset reaches it first; when it does read them,
/// the copies sent again are only acknowledged (see `first_delivery`, unit-tested in the cluster crate).
#[test]
fn after_a_stall_the_batches_not_given_up_are_sent_again_and_delivered_once() {
    let c = Nodes::start_with(3, &["--node-timeout", "2"]);
    let (_sub, out) = mosquitto_sub(&c.nodes[1], &["-t", "again/#", "-q", "2", "-v"]);
    c.wait_node_routes(0, 2, 1);
    let first = port_of(&c.nodes[0]);
    publish_to(&first, &["-t", "again/open", "-m", "opens the stream"]);
    out.wait_for(|l| l == "again/open opens the stream");
    let batches = |c: &Nodes| c.status(0)["forward_batches"].as_u64().unwrap_or(0);
    let paused = c.nodes[1].pause();
    // Two batches node 2 has in its socket and does not read yet; the second is younger.
    for m in ["old", "young"] {
        let before = batches(&c);
        publish_to(&first, &["-t", "again/t", "-m", m]);
        let deadline = std::time::Instant::now() + WAIT;
        while batches(&c) == before {
            assert!(std::time::Instant::now() < deadline, "{m} never sent to node 2");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    // Node 1 gives up the old one and opens the stream again; node 2 comes back in time for the young one to be
    // sent again, while it may also read both from the old stream (unless the old stream's reset came first).
    c.nodes[0].wait_log("has not acknowledged forwarded messages in time");
    drop(paused);
    // Until a later message comes through (node 2's routes may have been purged meanwhile and be on their way
    // back): by then, the young one has come again on the new stream, before it.
    let deadline = std::time::Instant::now() + WAIT;
    for i in 0.. {
        c.wait_node_routes(0, 2, 1);
        publish_to(&first, &["-t", "again/later", "-q", "2", "-m", &i.to_string()]);
        let got = out.wait_for_within(|l| l.starts_with("again/later "), std::time::Duration::from_secs(1));
        if got.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing reached node 2 after it came back");
    }
    let got = out.messages();
    let count = |m: &str| got.iter().filter(|l| *l == &format!("again/t {m}")).count();
    // The old one was given up (counted as a failure); node 2 may still have read it before the old stream's end.
    assert!(count("old") <= 1, "{got:?}");
    assert_eq!(count("young"), 1, "{got:?}");
}

/// Two connections of one client id at nearly the same time, on two nodes: the earlier one is still in its
/// handshake (resuming a session from a node that is slow to answer) when the later one is announced to its node.
/// It is then answered and closed at once as taken over (0x8E), its session ended; the later one stays. Before,
/// both stayed connected.
#[test]
fn a_connection_still_in_its_handshake_when_a_later_one_elsewhere_is_announced_is_closed() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let mut resume = connect_packet(ProtocolVersion::V5, "twin", false);
    resume.properties.session_expiry_interval = Some(3600);
    // A persistent session of "twin", held by node 3.
    let (mut held, _) = Raw::connect(c.nodes[2].mqtt, resume.clone());
    held.send(&Packet::Disconnect(Disconnect::default()));
    assert_eq!(held.recv(), None);
    c.wait_session_owner("twin", Some(3));

    let paused = c.nodes[2].pause();
    // The earlier connection resumes the session through node 1, which claims it (nodes 1 and 2 are a quorum)
    // and then waits for node 3 to hand it over.
    let addr = c.nodes[0].mqtt;
    let earlier = std::thread::spawn(move || {
        let (mut raw, ack) = Raw::connect(addr, resume);
        (ack.reason_code, raw.recv_until_closed())
    });
    let deadline = std::time::Instant::now() + WAIT;
    while c.session_owner(1, "twin").map(|(n, _)| n) != Some(1) {
        assert!(std::time::Instant::now() < deadline, "node 1 never claimed the session");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The later connection, a clean one, through node 2; node 1 hears of it during the earlier one's handshake.
    let (mut later, ack) = Raw::connect(c.nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "twin", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    c.nodes[0].wait_log("another node has a connection of this client id; one is in its handshake here");
    drop(paused);
    let (code, after) = earlier.join().unwrap();
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(after, vec![Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))]);
    later.send(&Packet::PingReq);
    assert_eq!(later.recv(), Some(Packet::PingResp));
    // The session the earlier connection resumed is gone with it: no node holds one for the id.
    c.wait_session_owner("twin", None);
}

/// [MQTT-4.3.3-10] across nodes: a QoS 2 PUBLISH whose PUBREL has not come, sent again (DUP) by its client after
/// its persistent session moved to another node, is acknowledged there and not delivered a second time.
#[test]
fn a_qos_2_publish_repeated_after_its_session_moved_is_delivered_once() {
    use skein_codec::*;
    let c = Nodes::start(3);
    let (sub, out) = mosquitto_sub_started(&c.nodes[2], &["-q", "2", "-t", "q2/#", "-v", "-C", "2"]);
    for node in [1, 2] {
        c.wait_node_routes(node - 1, 3, 1);
    }
    let (mut p, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "q2-mover", false));
    p.send(&publish_owned("q2/x", QoS::ExactlyOnce, 77, "once".to_string()));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 77));
    out.wait_for(|l| l == "q2/x once");
    drop(p);
    c.wait_session_owner("q2-mover", Some(1));

    // Back through node 2, before releasing it: the session, with 77 unreleased, moves there.
    let (mut p, ack) = Raw::connect(c.nodes[1].mqtt, connect_packet(ProtocolVersion::V311, "q2-mover", false));
    assert!(ack.session_present);
    let Packet::Publish(mut again) = publish_owned("q2/x", QoS::ExactlyOnce, 77, "once".to_string()) else {
        unreachable!()
    };
    again.dup = true;
    p.send(&Packet::Publish(again));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 77));
    p.send(&Packet::PubRel(Ack::new(77)));
    assert!(matches!(p.recv(), Some(Packet::PubComp(a)) if a.packet_id == 77));
    // The identifier is free again: a new message with it is a new message.
    p.send(&publish_owned("q2/end", QoS::ExactlyOnce, 77, "end".to_string()));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 77));
    p.send(&Packet::PubRel(Ack::new(77)));
    assert!(matches!(p.recv(), Some(Packet::PubComp(a)) if a.packet_id == 77));
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), ["q2/x once", "q2/end end"]);
}

/// A retained change goes to every member, to hold; the copy for one that is down waits in its forward stream until
/// it returns. Back, that member holds the newest retained message, and does not deliver the late copies to a
/// client that subscribed after them, as if they were new (seen once in CI: a subscriber got `v1` after `v2`).
#[test]
fn late_retained_copies_are_held_not_delivered_to_later_subscribers() {
    let mut c = Nodes::start(3);
    c.nodes[2].kill9();
    publish_to(&port_of(&c.nodes[0]), &["-t", "late/x", "-r", "-q", "1", "-m", "v1"]);
    publish_to(&port_of(&c.nodes[1]), &["-t", "late/x", "-r", "-q", "1", "-m", "v2"]);
    // Node 1's copy of v1 reaches node 3 only after the subscriber below is there.
    let paused = c.nodes[0].pause();
    let join = c.cluster_addrs.join(",");
    c.nodes[2] = c.spawn(2, &join);
    wait_ready(c.nodes[2].http.unwrap());
    let (sub, out) = mosquitto_sub(&c.nodes[2], &["-t", "late/#", "-v", "-C", "2"]);
    drop(paused);
    // The copies reach it: both senders' streams are empty.
    let deadline = std::time::Instant::now() + WAIT;
    while (0..2).any(|i| c.status(i)["forward_pending"].as_u64() != Some(0)) {
        assert!(std::time::Instant::now() < deadline, "copies never taken: {} {}", c.status(0), c.status(1));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    publish_to(&port_of(&c.nodes[2]), &["-t", "late/end", "-q", "1", "-m", "marker"]);
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), ["late/x v2", "late/end marker"]);
}

/// A SUBACK comes once every node routes to the new subscription: a message published on another node right after
/// it reaches the subscriber, as with one broker (no moment in which only the subscriber's node knows of it).
#[test]
fn a_message_published_on_another_node_right_after_the_suback_arrives() {
    let c = Nodes::start(3);
    let mut publishers: Vec<Raw> = (0..3)
        .map(|i| Raw::connect(c.nodes[i].mqtt, connect_packet(ProtocolVersion::V311, &format!("ra-pub-{i}"), true)).0)
        .collect();
    for i in 0..9u16 {
        let topic = format!("right-after/{i}");
        let at = usize::from(i) % 3;
        let mut sub = raw_subscriber(c.nodes[at].mqtt, ProtocolVersion::V311, "ra-sub", &[(&topic, QoS::AtLeastOnce)]);
        // At once, on each of the other nodes in turn.
        let p = &mut publishers[(at + 1 + usize::from(i / 3) % 2) % 3];
        p.send(&publish_owned(&topic, QoS::AtLeastOnce, i + 1, format!("m{i}")));
        assert!(matches!(p.recv(), Some(Packet::PubAck(a)) if a.packet_id == i + 1));
        let got = expect_publish(&mut sub);
        assert_eq!((&*got.topic, &got.payload[..]), (topic.as_str(), format!("m{i}").as_bytes()));
    }
}

/// Without quorum a dead node's routes cannot be purged: a publish matching them waits the node timeout counted from
/// when the node went, not a node timeout of its own each (before, every QoS 1 PUBACK took the whole node timeout
/// for as long as the outage lasted). What those publishes could not bring there is counted.
#[test]
fn without_quorum_a_dead_nodes_routes_hold_publishes_up_once_not_each_time() {
    use skein_codec::*;
    const NODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
    let mut c = Nodes::start_with(3, &["--node-timeout", "3"]);
    let _far = raw_subscriber(c.nodes[1].mqtt, ProtocolVersion::V311, "gone-sub", &[("gone/#", QoS::AtLeastOnce)]);
    c.wait_node_routes(0, 2, 1);
    let (mut publ, _) = Raw::connect(c.nodes[0].mqtt, connect_packet(ProtocolVersion::V311, "left-alone", true));
    publ.send(&publish("gone/0", QoS::AtLeastOnce, 1, b"opens the stream"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(1))));
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    publ.send(&publish("gone/1", QoS::AtLeastOnce, 2, b"waits once"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(2))));
    for id in 3..6 {
        let sent = std::time::Instant::now();
        publ.send(&publish("gone/2", QoS::AtLeastOnce, id, b"no wait of its own"));
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(id))));
        assert!(sent.elapsed() < NODE_TIMEOUT, "PUBACK {id} after {:?}: a node timeout of its own", sent.elapsed());
    }
    assert!(c.status(0)["forward_failures"].as_u64() >= Some(4), "{}", c.status(0));
}

/// A leader whose voters have gone is still leader to Raft, but reports what a follower cut off from them does: no
/// leader (`skein_cluster_has_leader 0`, for the alert) and `/readyz` 503; with a voter back, it is ready again.
#[test]
fn a_leader_without_quorum_reports_no_leader_and_is_not_ready() {
    let mut c = Nodes::start(3);
    let leader = (0..3).find(|i| c.status(*i)["leader"] == c.status(*i)["node_id"]).expect("a leader");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for i in &others {
        c.nodes[*i].kill9();
    }
    let http = c.nodes[leader].http.unwrap();
    let deadline = std::time::Instant::now() + WAIT * 2;
    while http_get(http, "/readyz").map(|(code, _)| code) != Some(503) {
        assert!(std::time::Instant::now() < deadline, "still ready without quorum: {}", c.status(leader));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(c.status(leader)["quorum_lost"], true, "{}", c.status(leader));
    let (_, metrics) = http_get(http, "/metrics").unwrap();
    assert!(metrics.lines().any(|l| l == "skein_cluster_has_leader 0"), "{metrics}");
    // The outage is said once per node, not with every failed heartbeat (the Raft library logs several a second per
    // node, for as long as it lasts: some 40 lines in the 5 s to here).
    let ids: Vec<String> = others.iter().map(|i| (*i + 1).to_string()).collect();
    let log = c.nodes[leader].log();
    for id in &ids {
        let said =
            log.lines().filter(|l| l.contains("node not answering") && l.contains(&format!("node={id} "))).count();
        assert_eq!(said, 1, "node {id}'s outage said once:\n{log}");
    }
    let raft_lines = log.lines().filter(|l| l.contains("openraft")).count();
    assert!(raft_lines <= 12, "{raft_lines} lines from the Raft library in a few seconds:\n{log}");
    let join = c.cluster_addrs.join(",");
    c.nodes[others[0]] = c.spawn(others[0], &join);
    wait_ready(http);
    assert_eq!(c.status(leader)["quorum_lost"], false);
    c.nodes[leader].wait_log(&format!("node answering again node={} ", ids[0]));
}
