//! `$SYS/broker/...` topics with Mosquitto's names, published retained every `sys_interval` when they change.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::Broker;
use crate::message::Message;
use crate::stats::Stats;

/// The topics and their current values.
pub fn snapshot(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = &broker.stats;
    let connected = Stats::get(&s.clients_connected);
    let sessions = broker.session_count() as u64;
    vec![
        ("$SYS/broker/version", format!("skein {}", env!("CARGO_PKG_VERSION"))),
        ("$SYS/broker/uptime", format!("{} seconds", broker.started.elapsed().as_secs())),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/active", connected.to_string()),
        ("$SYS/broker/clients/total", sessions.max(connected).to_string()),
        ("$SYS/broker/clients/disconnected", sessions.saturating_sub(connected).to_string()),
        ("$SYS/broker/clients/maximum", Stats::get(&s.clients_maximum).to_string()),
        ("$SYS/broker/messages/received", Stats::get(&s.messages_received).to_string()),
        ("$SYS/broker/messages/sent", Stats::get(&s.messages_sent).to_string()),
        ("$SYS/broker/messages/stored", broker.queued_count().to_string()),
        ("$SYS/broker/publish/messages/received", Stats::get(&s.publish_received).to_string()),
        ("$SYS/broker/publish/messages/sent", Stats::get(&s.publish_sent).to_string()),
        ("$SYS/broker/publish/messages/dropped", Stats::get(&s.publish_dropped).to_string()),
        ("$SYS/broker/bytes/received", Stats::get(&s.bytes_received).to_string()),
        ("$SYS/broker/bytes/sent", Stats::get(&s.bytes_sent).to_string()),
        ("$SYS/broker/retained messages/count", broker.retained_count().to_string()),
        ("$SYS/broker/subscriptions/count", broker.subscription_count().to_string()),
    ]
}

/// Publishes the `$SYS` topics until the broker shuts down. Values are published when they change, as Mosquitto
/// does, except uptime, which changes every time.
pub async fn run(broker: Arc<Broker>) {
    if broker.config.sys_interval.is_zero() {
        return;
    }
    let mut last: HashMap<&'static str, String> = HashMap::new();
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(broker.config.sys_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for (topic, value) in snapshot(&broker) {
            if last.get(topic) == Some(&value) {
                continue;
            }
            broker.publish(Message::system(topic, value.clone(), true));
            last.insert(topic, value);
        }
    }
}
