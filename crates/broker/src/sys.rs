//! `$SYS/broker/...` topics with Mosquitto's names, published retained every `sys_interval` when they change.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::Broker;
use crate::message::Message;
use crate::stats::Stats;

/// Reads the process's heap: bytes in use now, and the most there have been. Process-wide, so set once, by the
/// binary, which knows its allocator (`set_heap_usage`).
pub type HeapUsage = fn() -> (u64, u64);

static HEAP_USAGE: std::sync::OnceLock<HeapUsage> = std::sync::OnceLock::new();

/// Has `$SYS/broker/heap/current` and `heap/maximum` published from `usage` (Mosquitto publishes them when built
/// with memory tracking, as Debian's is). Without it they are not published. The first call counts.
pub fn set_heap_usage(usage: HeapUsage) {
    let _ = HEAP_USAGE.set(usage);
}

/// The topics and their current values.
pub fn snapshot(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = &broker.stats;
    let connected = Stats::get(&s.clients_connected);
    let sessions = broker.session_count() as u64;
    let mut topics = vec![
        ("$SYS/broker/version", format!("skein {}", env!("CARGO_PKG_VERSION"))),
        ("$SYS/broker/uptime", format!("{} seconds", broker.started.elapsed().as_secs())),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/active", connected.to_string()),
        ("$SYS/broker/clients/total", sessions.max(connected).to_string()),
        ("$SYS/broker/clients/disconnected", sessions.saturating_sub(connected).to_string()),
        ("$SYS/broker/clients/inactive", sessions.saturating_sub(connected).to_string()),
        ("$SYS/broker/clients/expired", Stats::get(&s.sessions_expired).to_string()),
        ("$SYS/broker/clients/maximum", Stats::get(&s.clients_maximum).to_string()),
        ("$SYS/broker/messages/received", Stats::get(&s.messages_received).to_string()),
        ("$SYS/broker/messages/sent", Stats::get(&s.messages_sent).to_string()),
        // As Mosquitto's: retained messages and those queued for sessions.
        ("$SYS/broker/messages/stored", (broker.queued_count() + broker.retained_count()).to_string()),
        ("$SYS/broker/store/messages/count", (broker.queued_count() + broker.retained_count()).to_string()),
        ("$SYS/broker/publish/messages/received", Stats::get(&s.publish_received).to_string()),
        ("$SYS/broker/publish/messages/sent", Stats::get(&s.publish_sent).to_string()),
        ("$SYS/broker/publish/messages/dropped", Stats::get(&s.publish_dropped).to_string()),
        ("$SYS/broker/publish/bytes/received", Stats::get(&s.publish_bytes_received).to_string()),
        ("$SYS/broker/publish/bytes/sent", Stats::get(&s.publish_bytes_sent).to_string()),
        ("$SYS/broker/bytes/received", Stats::get(&s.bytes_received).to_string()),
        ("$SYS/broker/bytes/sent", Stats::get(&s.bytes_sent).to_string()),
        ("$SYS/broker/retained messages/count", broker.retained_count().to_string()),
        ("$SYS/broker/subscriptions/count", broker.subscription_count().to_string()),
        ("$SYS/broker/shared_subscriptions/count", broker.shared_subscription_count().to_string()),
    ];
    if let Some(usage) = HEAP_USAGE.get() {
        let (current, maximum) = usage();
        topics.push(("$SYS/broker/heap/current", current.to_string()));
        topics.push(("$SYS/broker/heap/maximum", maximum.to_string()));
    }
    topics
}

/// Reads one counter.
type Counter = fn(&Stats) -> u64;

/// The counters Mosquitto publishes load averages of, as `$SYS/broker/load/{name}/{1min,5min,15min}`: per minute,
/// exponentially smoothed over that span.
const LOADS: [(&str, Counter); 9] = [
    ("messages/received", |s| Stats::get(&s.messages_received)),
    ("messages/sent", |s| Stats::get(&s.messages_sent)),
    ("publish/received", |s| Stats::get(&s.publish_received)),
    ("publish/sent", |s| Stats::get(&s.publish_sent)),
    ("publish/dropped", |s| Stats::get(&s.publish_dropped)),
    ("bytes/received", |s| Stats::get(&s.bytes_received)),
    ("bytes/sent", |s| Stats::get(&s.bytes_sent)),
    ("sockets", |s| Stats::get(&s.connections_total)),
    ("connections", |s| Stats::get(&s.connections_total)),
];

/// The load averages' spans: topic suffix and seconds.
const SPANS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// One step of a load average, as Mosquitto computes it: `rate` (per minute, over the last `elapsed` seconds) pulls
/// `current` towards it with the weight a span of `span` seconds gives that much time.
pub fn smoothed(current: f64, rate: f64, elapsed: f64, span: f64) -> f64 {
    let keep = (-elapsed / span).exp();
    rate + keep * (current - rate)
}

/// The load averages: each counter's last value and its three averages.
struct Loads {
    last: [u64; LOADS.len()],
    averages: [[f64; SPANS.len()]; LOADS.len()],
    at: std::time::Instant,
}

impl Loads {
    fn new(s: &Stats) -> Loads {
        Loads {
            last: LOADS.map(|(_, get)| get(s)),
            averages: [[0.0; SPANS.len()]; LOADS.len()],
            at: std::time::Instant::now(),
        }
    }

    /// Moves the averages on to now; the topics and their values (two decimals, as Mosquitto writes them).
    fn step(&mut self, s: &Stats) -> Vec<(String, String)> {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64().max(0.001);
        self.at = now;
        let mut out = Vec::with_capacity(LOADS.len() * SPANS.len());
        for (i, (name, get)) in LOADS.iter().enumerate() {
            let value = get(s);
            let rate = value.saturating_sub(self.last[i]) as f64 * 60.0 / elapsed;
            self.last[i] = value;
            for (j, (suffix, span)) in SPANS.iter().enumerate() {
                self.averages[i][j] = smoothed(self.averages[i][j], rate, elapsed, *span);
                out.push((format!("$SYS/broker/load/{name}/{suffix}"), format!("{:.2}", self.averages[i][j])));
            }
        }
        out
    }
}

/// Publishes the `$SYS` topics until the broker shuts down. Values are published when they change, as Mosquitto
/// does, except uptime, which changes every time.
pub async fn run(broker: Arc<Broker>) {
    if broker.config.sys_interval.is_zero() {
        return;
    }
    let mut last: HashMap<String, String> = HashMap::new();
    let mut loads = Loads::new(&broker.stats);
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(broker.config.sys_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let values = snapshot(&broker).into_iter().map(|(t, v)| (t.to_string(), v));
        for (topic, value) in values.chain(loads.step(&broker.stats)) {
            if last.get(&topic) == Some(&value) {
                continue;
            }
            broker.publish(Message::system(topic.as_str(), value.clone(), true));
            last.insert(topic, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_average_moves_towards_the_rate_by_the_time_passed() {
        // A steady rate is reached, and kept.
        let mut avg = 0.0;
        for _ in 0..600 {
            avg = smoothed(avg, 120.0, 10.0, 60.0);
        }
        assert!((avg - 120.0).abs() < 1e-6, "{avg}");
        // After one span, about 63% of the way (1 - 1/e), whatever the steps.
        let one_step = smoothed(0.0, 100.0, 60.0, 60.0);
        let six_steps = (0..6).fold(0.0, |a, _| smoothed(a, 100.0, 10.0, 60.0));
        assert!((one_step - 63.21).abs() < 0.01 && (six_steps - one_step).abs() < 1e-9, "{one_step} {six_steps}");
        // Longer spans move more slowly.
        assert!(smoothed(0.0, 100.0, 10.0, 900.0) < smoothed(0.0, 100.0, 10.0, 60.0));
    }
}
