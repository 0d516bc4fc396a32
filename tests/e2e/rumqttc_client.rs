//! rumqttc, an independent Rust client (3.1.1 and 5.0).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::support::*;

fn options(broker: &Skein, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", broker.port());
    o.set_clean_session(clean).set_keep_alive(Duration::from_secs(30));
    o
}

/// Polls until `pred` picks an event out, or fails after `WAIT`.
pub async fn until<T>(ev: &mut EventLoop, mut pred: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = ev.poll().await.expect("connection stays up");
            if let Some(t) = pred(&e) {
                return t;
            }
        }
    })
    .await
    .expect("event within the bound")
}

/// Until the publish just made is through: sent at QoS 0, acknowledged (PUBACK, PUBCOMP) above.
pub async fn published(ev: &mut EventLoop, qos: QoS) {
    until(ev, |e| match e {
        Event::Outgoing(rumqttc::Outgoing::Publish(_)) if qos == QoS::AtMostOnce => Some(()),
        Event::Incoming(Packet::PubAck(_)) | Event::Incoming(Packet::PubComp(_)) => Some(()),
        _ => None,
    })
    .await
}

/// The next PUBLISH that arrives.
pub async fn next_publish(ev: &mut EventLoop) -> rumqttc::Publish {
    until(ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn rumqttc_round_trips_at_every_qos() {
    let broker = Skein::start(&[]);
    runtime().block_on(async {
        let (sub, mut sub_ev) = AsyncClient::new(options(&broker, "rq-sub", true), 16);
        sub.subscribe("rq/#", QoS::ExactlyOnce).await.unwrap();
        until(&mut sub_ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
        let (publ, mut pub_ev) = AsyncClient::new(options(&broker, "rq-pub", true), 16);
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            publ.publish(format!("rq/{i}"), qos, false, format!("m{i}")).await.unwrap();
            published(&mut pub_ev, qos).await;
            let p = next_publish(&mut sub_ev).await;
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos),
                (format!("rq/{i}").as_str(), format!("m{i}").as_bytes(), qos)
            );
        }
    });
}

#[test]
fn rumqttc_persistent_session_resumes() {
    let broker = Skein::start(&[]);
    runtime().block_on(async {
        {
            let (c, mut ev) = AsyncClient::new(options(&broker, "rq-durable", false), 16);
            c.subscribe("dur/#", QoS::AtLeastOnce).await.unwrap();
            until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
            c.disconnect().await.unwrap();
            until(&mut ev, |e| matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)).then_some(())).await;
        }
        mosquitto_pub(&broker, &["-t", "dur/x", "-q", "1", "-m", "while away"]);
        let (_c, mut ev) = AsyncClient::new(options(&broker, "rq-durable", false), 16);
        let present = until(&mut ev, |e| match e {
            Event::Incoming(Packet::ConnAck(a)) => Some(a.session_present),
            _ => None,
        })
        .await;
        assert!(present);
        let p = next_publish(&mut ev).await;
        assert_eq!(&p.payload[..], b"while away");
    });
}
