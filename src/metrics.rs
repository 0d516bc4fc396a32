//! `GET /metrics`: the node's figures in Prometheus' text format. Nothing is counted for it: every value is read at
//! scrape time from what the broker and the cluster already keep (the broker's `Stats` atomics, its session and
//! router sizes, the cluster's Raft metrics and forwarding counters) and from `/proc/self`, into a registry made
//! for that one scrape. So the publish path pays nothing for metrics, and a scrape costs a few microseconds plus
//! one walk over the sessions (for the queued count, as `$SYS/broker/messages/stored` does).
//!
//! The names are a contract with the dashboards and alert rules in `deploy/` and the Helm chart
//! (`scripts/check-deploy` checks that every name they use is exported, against a live scrape).

use prometheus::{Encoder, Opts, Registry, TextEncoder};
use skein_broker::Broker;
use skein_broker::stats::Stats;
use skein_cluster::node::ClusterNode;

/// The text a scrape gets. `ready` is what `/readyz` would answer.
pub fn render(broker: &Broker, node: Option<&ClusterNode>, ready: bool) -> Result<String, prometheus::Error> {
    use Value::{Counter, Gauge};
    let s = &broker.stats;
    let n = |c: &std::sync::atomic::AtomicU64| Counter(Stats::get(c) as f64);
    let mut rows: Vec<(&str, &str, Value)> = vec![
        (
            "skein_ready",
            "1 when /readyz answers 200: listening, not shutting down, joined with a leader when clustered.",
            Gauge(f64::from(u8::from(ready))),
        ),
        ("skein_clients_connected", "Clients connected now.", Gauge(Stats::get(&s.clients_connected) as f64)),
        (
            "skein_connections_parked",
            "Idle client connections parked without a task of their own (idle_park_after).",
            Gauge(broker.parked_connections() as f64),
        ),
        (
            "skein_clients_maximum",
            "Most clients connected at once since the node started.",
            Gauge(Stats::get(&s.clients_maximum) as f64),
        ),
        (
            "skein_clients_limit",
            "max_connections: clients accepted at once over all listeners (0: no limit).",
            Gauge(broker.config.max_connections as f64),
        ),
        (
            "skein_sessions",
            "Sessions held here: connected clients and offline persistent sessions.",
            Gauge(broker.session_count() as f64),
        ),
        (
            "skein_subscriptions",
            "Subscriptions held here, over all sessions.",
            Gauge(broker.subscription_count() as f64),
        ),
        ("skein_retained_messages", "Retained messages.", Gauge(broker.retained_count() as f64)),
        (
            "skein_messages_queued",
            "QoS 1/2 messages queued for or in flight to the sessions held here.",
            Gauge(broker.queued_count() as f64),
        ),
        ("skein_connections_total", "Clients accepted (CONNACK success).", n(&s.connections_total)),
        ("skein_connections_refused_total", "CONNECTs refused, for any reason.", n(&s.connections_refused)),
        ("skein_auth_failures_total", "CONNECTs refused for their credentials.", n(&s.auth_failures)),
        ("skein_acl_denied_total", "Publishes and deliveries the ACL refused.", n(&s.acl_denied)),
        ("skein_packets_received_total", "MQTT packets received, of every type.", n(&s.messages_received)),
        ("skein_packets_sent_total", "MQTT packets sent, of every type.", n(&s.messages_sent)),
        ("skein_publish_received_total", "PUBLISH packets received from clients.", n(&s.publish_received)),
        ("skein_publish_sent_total", "PUBLISH packets sent to clients.", n(&s.publish_sent)),
        (
            "skein_publish_dropped_total",
            "Messages not delivered to a subscriber: its queue was full, QoS 0 for an offline client, or too large for it.",
            n(&s.publish_dropped),
        ),
        (
            "skein_publish_too_large_total",
            "Publishes over message_size_limit (acknowledged, not delivered).",
            n(&s.publish_too_large),
        ),
        (
            "skein_publish_bytes_received_total",
            "Payload bytes of PUBLISH packets received from clients.",
            n(&s.publish_bytes_received),
        ),
        (
            "skein_publish_bytes_sent_total",
            "Payload bytes of PUBLISH packets sent to clients.",
            n(&s.publish_bytes_sent),
        ),
        ("skein_bytes_received_total", "Bytes of MQTT packets received.", n(&s.bytes_received)),
        ("skein_bytes_sent_total", "Bytes of MQTT packets sent.", n(&s.bytes_sent)),
    ];
    if let Some(node) = node {
        let c = node.figures();
        rows.extend([
            ("skein_cluster_node_id", "This node's id in the cluster.", Gauge(c.node_id as f64)),
            ("skein_cluster_members", "Members of the cluster, voters and learners.", Gauge(c.members as f64)),
            ("skein_cluster_voters", "Voting members of the cluster.", Gauge(c.voters as f64)),
            ("skein_cluster_has_leader", "1 when this node knows a leader.", Gauge(f64::from(u8::from(c.leader.is_some())))),
            ("skein_cluster_is_leader", "1 on the leader.", Gauge(f64::from(u8::from(c.leader == Some(c.node_id))))),
            ("skein_cluster_term", "The Raft term this node is in.", Gauge(c.term as f64)),
            ("skein_cluster_applied_index", "The last Raft log index this node has applied.", Gauge(c.applied_index as f64)),
            ("skein_cluster_routes", "Topic filters in the replicated route table.", Gauge(c.routes as f64)),
            ("skein_cluster_registered_sessions", "Persistent sessions in the cluster's client registry.", Gauge(c.registered_sessions as f64)),
            ("skein_cluster_forwarded_total", "Messages forwarded to other nodes.", Counter(c.forwarded as f64)),
            ("skein_cluster_forward_batches_total", "Batches of forwarded messages sent.", Counter(c.forward_batches as f64)),
            ("skein_cluster_forward_failures_total", "Forwarded messages given up: the node could not be reached within node_timeout, or QoS 0 for a node that could not be reached.", Counter(c.forward_failures as f64)),
            ("skein_cluster_forward_pending", "Forwarded messages other nodes have not acknowledged yet.", Gauge(c.forward_pending as f64)),
            ("skein_cluster_takeovers_answered_total", "Session take-overs this node answered for other nodes.", Counter(c.takeovers_answered as f64)),
            ("skein_cluster_relaying_sessions", "Sessions that moved from this node and still relay to their new node while the routes change.", Gauge(c.relaying as f64)),
            ("skein_cluster_relayed_total", "Messages relayed to the node a session moved to (also counted in skein_cluster_forwarded_total).", Counter(c.relayed as f64)),
            ("skein_cluster_duplicates_skipped_total", "Copies of a message not queued for a session that moved here, because it already had the message: while a session moves, a message can reach it two ways.", n(&s.duplicates_skipped)),
        ]);
    }
    if let Some(p) = Process::read() {
        rows.extend([
            ("process_cpu_seconds_total", "User and system CPU time spent, in seconds.", Counter(p.cpu_seconds)),
            ("process_resident_memory_bytes", "Resident memory size in bytes.", Gauge(p.resident_bytes as f64)),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", Gauge(p.virtual_bytes as f64)),
            ("process_open_fds", "Open file descriptors.", Gauge(p.open_fds as f64)),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                Gauge(p.start_time_seconds),
            ),
            ("process_threads", "Threads of the process.", Gauge(p.threads as f64)),
        ]);
        if let Some(max) = p.max_fds {
            rows.push(("process_max_fds", "The limit on open file descriptors.", Gauge(max as f64)));
        }
    }

    let registry = Registry::new();
    let info = prometheus::IntGauge::with_opts(
        Opts::new("skein_build_info", "Always 1; the version is a label.")
            .const_label("version", env!("CARGO_PKG_VERSION")),
    )?;
    info.set(1);
    registry.register(Box::new(info))?;
    for (name, help, value) in rows {
        match value {
            Gauge(v) => {
                let g = prometheus::Gauge::new(name, help)?;
                g.set(v);
                registry.register(Box::new(g))?;
            }
            Counter(v) => {
                let c = prometheus::Counter::new(name, help)?;
                c.inc_by(v);
                registry.register(Box::new(c))?;
            }
        }
    }
    let mut out = Vec::with_capacity(8 * 1024);
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric's type and value. Prometheus keeps every sample as a float; counts stay exact up to 2^53.
enum Value {
    Gauge(f64),
    Counter(f64),
}

/// This process as `/proc/self` shows it (Linux).
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    /// `None` when unlimited.
    max_fds: Option<u64>,
    start_time_seconds: f64,
    threads: u64,
}

/// The unit of `/proc/PID/stat`'s times: the kernel's USER_HZ, which the kernel reports in whatever its own tick
/// rate, and which is 100 on every architecture this runs on.
const USER_HZ: f64 = 100.0;

impl Process {
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Process::parse(&stat, &status, &limits, &boot, open_fds)
    }

    fn parse(stat: &str, status: &str, limits: &str, boot: &str, open_fds: u64) -> Option<Process> {
        // The command name, in parentheses, may hold spaces and parentheses itself: fields start after the last ')'.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
        // Numbered as in proc(5), where field 3 (state) is the first after the name.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let kib = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        };
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        let boot_time = boot.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) as f64 / USER_HZ,
            resident_bytes: kib("VmRSS:")? * 1024,
            virtual_bytes: kib("VmSize:")? * 1024,
            open_fds,
            max_fds,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / USER_HZ,
            threads: field(20)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_with_names_that_hold_spaces_and_parentheses() {
        let stat = "4242 (sk ein) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 7 0 123456 9000000 1500 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let status = "Name:\tskein\nVmSize:\t  8790 kB\nVmRSS:\t    6000 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                20000                files     \n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let p = Process::parse(stat, status, limits, boot, 12).expect("parsed");
        assert_eq!(p.cpu_seconds, 3.25, "utime + stime, in USER_HZ");
        assert_eq!((p.resident_bytes, p.virtual_bytes), (6000 * 1024, 8790 * 1024));
        assert_eq!((p.open_fds, p.max_fds, p.threads), (12, Some(20000), 7));
        assert!((p.start_time_seconds - 1_700_001_234.56).abs() < 1e-3, "boot time + starttime: {p:?}");
        let unlimited = limits.replace("20000                20000", "unlimited            unlimited");
        assert_eq!(Process::parse(stat, status, &unlimited, boot, 12).and_then(|p| p.max_fds), None);
    }

    #[test]
    fn this_process_is_read() {
        let p = Process::read().expect("/proc/self");
        assert!(p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 1 && p.max_fds.is_none_or(|m| m >= p.open_fds));
        assert!(p.start_time_seconds > 1.0e9, "{p:?}");
    }
}
