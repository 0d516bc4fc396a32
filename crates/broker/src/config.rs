//! The broker's limits and switches, with Mosquitto's names and meanings. The binary fills this from its one
//! configuration schema; the broker itself reads no files or flags.

use std::time::Duration;

use skein_codec::QoS;

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Accept clients without a user name (Mosquitto `allow_anonymous`).
    pub allow_anonymous: bool,
    /// QoS 1 and 2 messages in flight to one client at a time; 0 means no limit (Mosquitto `max_inflight_messages`).
    /// An MQTT 5.0 client's Receive Maximum lowers it further. It is also our Receive Maximum: the unreleased QoS 2
    /// messages a client may have towards us.
    pub max_inflight_messages: usize,
    /// Messages queued for one client beyond those in flight; 0 means no limit. When full, further messages for
    /// that client are dropped and counted (Mosquitto `max_queued_messages`).
    pub max_queued_messages: usize,
    /// Payload bytes queued per client beyond those in flight: while what is queued is under it, a message is
    /// queued; past it, messages for that client are dropped and counted (Mosquitto `max_queued_bytes`). 0 = no
    /// limit. Both limits apply: a message is queued only while neither is reached.
    pub max_queued_bytes: usize,
    /// Largest payload accepted, in bytes; 0 means no limit (Mosquitto `message_size_limit`). Larger publishes
    /// complete their QoS flow but are not delivered.
    pub message_size_limit: usize,
    /// Largest packet read from a client, header included; 0 means MQTT's own maximum (Mosquitto
    /// `max_packet_size`). Larger packets close the connection.
    pub max_packet_size: usize,
    /// Concurrent client connections; 0 means no limit (Mosquitto `max_connections`, where -1 means none).
    pub max_connections: usize,
    /// Largest keep alive a client may ask for, seconds (Mosquitto `max_keepalive`). A 3.x client asking for more
    /// is refused; an MQTT 5.0 client is told to use this value (Server Keep Alive).
    pub max_keepalive: u16,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// A plain TCP connection with nothing read or sent for this long gives up its task and waits on a poll of its
    /// own until the client or its session has something (`parking`); `None` keeps every connection in a task.
    /// Parking and resuming cost about 40 µs of CPU (measured: 1,000 publishers and 1,000 subscribers at one
    /// message a second each, all parking between messages, took 2.5 times the CPU per message of none parking), so
    /// this is longer than the period of a device that reports every few seconds: such a device stays in its task,
    /// and one that only pings (a 60 s keep alive) parks between pings.
    pub idle_park_after: Option<Duration>,
    /// Interval of the `$SYS/` updates; zero turns them off (Mosquitto `sys_interval`).
    pub sys_interval: Duration,
    /// Queue QoS 0 messages for offline persistent sessions too (Mosquitto `queue_qos0_messages`).
    pub queue_qos0_messages: bool,
    /// A client may connect with an empty client id and be given one (MQTT 3.1.1 with a clean session, MQTT 5.0);
    /// when false such a client is refused: identifier rejected (Mosquitto `allow_zero_length_clientid`).
    pub allow_zero_length_clientid: bool,
    /// The start of the client ids given to clients that sent none (Mosquitto `auto_id_prefix`).
    pub auto_id_prefix: String,
    /// When not empty, only client ids that start with it may connect; others are refused as not authorised
    /// (Mosquitto `clientid_prefixes`).
    pub clientid_prefixes: String,
    /// A client's user name is its client id, whatever id it sent; a client without a user name is refused as not
    /// authorised (Mosquitto `use_username_as_clientid`).
    pub use_username_as_clientid: bool,
    /// How long an MQTT 3.x persistent session (Clean Session 0) is kept after its client disconnects; `None`:
    /// for ever (Mosquitto `persistent_client_expiration`). MQTT 5.0 clients say so themselves (Session Expiry
    /// Interval).
    pub persistent_client_expiration: Option<Duration>,
    /// Retained messages are accepted (MQTT 5.0 Retain Available).
    pub retain_available: bool,
    /// Topic aliases an MQTT 5.0 client may set on its publishes (Topic Alias Maximum in CONNACK; Mosquitto
    /// `max_topic_alias`); 0 turns them off.
    pub max_topic_alias: u16,
    /// The highest QoS a client may publish or be granted (MQTT 5.0 Maximum QoS in CONNACK; Mosquitto `max_qos`).
    pub max_qos: QoS,
    /// Levels a topic name or filter may have; 0 means no limit (EMQX `max_topic_levels`).
    pub max_topic_levels: usize,
    /// Bytes of UTF-8 a topic name or filter may have; 0 means the protocol's own 65,535.
    pub max_topic_length: usize,
    /// Subscriptions one client may hold; 0 means no limit (EMQX `max_subscriptions`).
    pub max_subscriptions: usize,
    /// New connections accepted per second, over all listeners; 0 means no limit. Beyond it the node accepts
    /// later (the kernel's backlog holds the rest).
    pub max_connection_rate: f64,
    /// PUBLISH packets read per second from one client; 0 means no limit. Beyond it the client is read later.
    pub max_publish_rate: f64,
}

impl BrokerConfig {
    /// Whether `topic` (a name or filter) has more levels than `max_topic_levels` allows. A topic of `n` bytes has at
    /// most `n + 1` levels, so most topics are passed without counting.
    pub fn too_many_levels(&self, topic: &str) -> bool {
        let max = self.max_topic_levels;
        max != 0 && topic.len() >= max && topic.bytes().filter(|b| *b == b'/').count() >= max
    }

    /// Whether `topic` (a name or a whole filter, `$share/{group}/` included) is longer than `max_topic_length`.
    pub fn too_long(&self, topic: &str) -> bool {
        self.max_topic_length != 0 && topic.len() > self.max_topic_length
    }
}

impl BrokerConfig {
    /// The Receive Maximum announced to MQTT 5.0 clients and enforced on every client's unreleased QoS 2
    /// messages: `max_inflight_messages`, as with Mosquitto; no limit there means the protocol's 65,535.
    pub fn receive_maximum(&self) -> u16 {
        match self.max_inflight_messages {
            0 => u16::MAX,
            n => u16::try_from(n).unwrap_or(u16::MAX),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            allow_anonymous: true,
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            message_size_limit: 0,
            max_packet_size: 0,
            max_connections: 0,
            max_keepalive: 65_535,
            connect_timeout: Duration::from_secs(10),
            idle_park_after: Some(Duration::from_secs(15)),
            sys_interval: Duration::from_secs(10),
            queue_qos0_messages: false,
            allow_zero_length_clientid: true,
            auto_id_prefix: "skein-".into(),
            clientid_prefixes: String::new(),
            use_username_as_clientid: false,
            persistent_client_expiration: None,
            retain_available: true,
            max_topic_alias: 10,
            max_qos: QoS::ExactlyOnce,
            max_topic_levels: 128,
            max_topic_length: 0,
            max_subscriptions: 0,
            max_connection_rate: 0.0,
            max_publish_rate: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_are_counted_only_where_they_could_be_too_many() {
        let c = BrokerConfig { max_topic_levels: 3, ..BrokerConfig::default() };
        for (topic, too_many) in
            [("a/b/c", false), ("a/b/c/d", true), ("///", true), ("//", false), ("abcdefgh", false)]
        {
            assert_eq!(c.too_many_levels(topic), too_many, "{topic}");
        }
        assert!(!BrokerConfig { max_topic_levels: 0, ..BrokerConfig::default() }.too_many_levels("a/b/c/d/e/f"));
        let c = BrokerConfig { max_topic_length: 5, ..BrokerConfig::default() };
        assert!(!c.too_long("a/b/c") && c.too_long("a/b/cd"));
    }
}
