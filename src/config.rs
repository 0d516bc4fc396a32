//! The one configuration schema of `skein serve`. Every key can come from the TOML file (`--config`), from an
//! environment variable `SKEIN_<KEY>` or from a flag `--<key-with-dashes>`; later sources win:
//! defaults < file < environment < flags. Keys keep Mosquitto's names where Mosquitto has the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// The lowest TLS version the TLS listeners take (Mosquitto `tls_version`). TLS 1.1 is not in rustls: `tlsv1.1`
/// takes 1.2 and 1.3, as `tlsv1.2` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
pub enum TlsVersion {
    #[serde(rename = "tlsv1.1")]
    #[value(name = "tlsv1.1")]
    Tls11,
    #[default]
    #[serde(rename = "tlsv1.2")]
    #[value(name = "tlsv1.2")]
    Tls12,
    #[serde(rename = "tlsv1.3")]
    #[value(name = "tlsv1.3")]
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every key, with its default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// MQTT over TCP listen addresses. None: local only mode, 127.0.0.1:1883 with anonymous clients allowed (as
    /// Mosquitto 2.0 without listeners).
    pub mqtt: Vec<SocketAddr>,
    /// MQTT over TLS listen addresses (with `tls_cert` and `tls_key`).
    pub mqtts: Vec<SocketAddr>,
    /// MQTT over WebSocket listen addresses (path `/mqtt`).
    pub ws: Vec<SocketAddr>,
    /// MQTT over secure WebSocket listen addresses (with `tls_cert` and `tls_key`).
    pub wss: Vec<SocketAddr>,
    /// Connections one listener takes at a time, as `ADDR=N` (Mosquitto's `max_connections` inside a `listener`
    /// block); the one over it is closed at once. `max_connections` bounds all listeners together.
    pub listener_max_connections: Vec<String>,
    /// PEM certificate chain and private key of the TLS listeners; reloaded when the files change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate: TLS clients must present a certificate it signed (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// The lowest TLS version taken.
    pub tls_version: TlsVersion,
    /// A TLS client certificate's Common Name is its user name (Mosquitto `use_identity_as_username`).
    pub use_identity_as_username: bool,
    /// HTTP listen address for /healthz and /readyz; none by default.
    pub http: Option<SocketAddr>,
    /// Where sled keeps retained messages and persistent sessions.
    pub data_dir: PathBuf,
    /// Keep retained messages and persistent sessions on disk; off keeps them in memory only.
    pub persistence: bool,
    /// Accept clients without a user name. Unset: only in local only mode (no `mqtt` listener given).
    pub allow_anonymous: Option<bool>,
    /// Mosquitto password file (`mosquitto_passwd` or `skein passwd`): clients with a user name must match it.
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file: what each client may publish, subscribe to and receive.
    pub acl_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `skein_broker=debug`.
    pub log_level: String,
    pub max_inflight_messages: usize,
    pub max_queued_messages: usize,
    /// Payload bytes queued per client beyond those in flight; 0 = no limit.
    pub max_queued_bytes: usize,
    pub message_size_limit: usize,
    pub max_packet_size: usize,
    /// -1 or 0: no limit.
    pub max_connections: i64,
    pub max_keepalive: u16,
    /// Seconds between `$SYS` updates; 0 turns them off.
    pub sys_interval: u64,
    pub queue_qos0_messages: bool,
    /// An empty client id is given one (true), or refused.
    pub allow_zero_length_clientid: bool,
    /// The start of the client ids given to clients that sent none.
    pub auto_id_prefix: String,
    /// Only client ids that start with this may connect; empty: any.
    pub clientid_prefixes: String,
    /// The user name is the client id.
    pub use_username_as_clientid: bool,
    /// How long an MQTT 3.x persistent session outlives its connection; 0: for ever.
    pub persistent_client_expiration: Expiration,
    pub retain_available: bool,
    /// Topic aliases an MQTT 5.0 client may use per connection; 0 turns them off.
    pub max_topic_alias: u16,
    /// The highest QoS clients may publish or be granted: 0, 1 or 2.
    pub max_qos: u8,
    /// Seconds a new connection has to complete its TLS handshake and send CONNECT.
    pub connect_timeout: f64,
    /// Seconds a plain TCP connection is idle before it parks without a task of its own; 0: never.
    pub idle_park_after: f64,
    /// Levels a topic name or filter may have; 0: no limit.
    pub max_topic_levels: usize,
    /// Bytes a topic name or filter may have; 0: the protocol's 65,535.
    pub max_topic_length: usize,
    /// Subscriptions one client may hold; 0: no limit.
    pub max_subscriptions: usize,
    /// New connections accepted per second over all listeners; 0: no limit.
    pub max_connection_rate: f64,
    /// PUBLISH packets read per second from one client; 0: no limit.
    pub max_publish_rate: f64,
    /// This node's id in a cluster; defaults to the ordinal of a StatefulSet host name (`skein-2` → 2), else 1.
    pub node_id: Option<u64>,
    /// Listen address of the node-to-node gRPC service; clustering is off without it.
    pub cluster: Option<SocketAddr>,
    /// The address peers reach this node's cluster service at [default: `cluster`; required when that is
    /// 0.0.0.0 or [::]]. Seeds recognise themselves in the join list by it, so it must be written as the list does.
    pub cluster_advertise: Option<String>,
    /// Seed nodes' cluster addresses: nodes started with the same list form one cluster.
    pub join: Vec<String>,
    /// Voters the cluster keeps; other nodes are learners.
    pub voters: usize,
    /// Seconds a member may stay silent before its routes are purged.
    pub node_timeout: f64,
    /// Largest retained message payload a cluster keeps (its Raft log carries each one); 0: no limit.
    pub cluster_retain_max_size: usize,
    /// Log entries between Raft snapshots (the log before a snapshot is compacted away).
    pub raft_snapshot_logs: u64,
    /// Seconds a stopping cluster node keeps answering for the persistent sessions of the clients it closed, so
    /// that they resume them on another node (0: not at all).
    pub drain_timeout: f64,
    /// PEM files for mutual TLS between peers: this node's certificate and key, and the cluster CA.
    pub cluster_tls_cert: Option<PathBuf>,
    pub cluster_tls_key: Option<PathBuf>,
    pub cluster_tls_ca: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let broker = skein_broker::BrokerConfig::default();
        Config {
            mqtt: Vec::new(),
            mqtts: Vec::new(),
            ws: Vec::new(),
            wss: Vec::new(),
            listener_max_connections: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_version: TlsVersion::Tls12,
            use_identity_as_username: false,
            http: None,
            data_dir: PathBuf::from("skein-data"),
            persistence: true,
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            max_inflight_messages: broker.max_inflight_messages,
            max_queued_messages: broker.max_queued_messages,
            max_queued_bytes: broker.max_queued_bytes,
            message_size_limit: broker.message_size_limit,
            max_packet_size: broker.max_packet_size,
            max_connections: -1,
            max_keepalive: broker.max_keepalive,
            sys_interval: broker.sys_interval.as_secs(),
            queue_qos0_messages: broker.queue_qos0_messages,
            allow_zero_length_clientid: broker.allow_zero_length_clientid,
            auto_id_prefix: broker.auto_id_prefix.clone(),
            clientid_prefixes: broker.clientid_prefixes.clone(),
            use_username_as_clientid: broker.use_username_as_clientid,
            persistent_client_expiration: Expiration(0),
            retain_available: broker.retain_available,
            max_topic_alias: broker.max_topic_alias,
            max_qos: broker.max_qos as u8,
            connect_timeout: broker.connect_timeout.as_secs_f64(),
            idle_park_after: broker.idle_park_after.map_or(0.0, |d| d.as_secs_f64()),
            max_topic_levels: broker.max_topic_levels,
            max_topic_length: broker.max_topic_length,
            max_subscriptions: broker.max_subscriptions,
            max_connection_rate: broker.max_connection_rate,
            max_publish_rate: broker.max_publish_rate,
            node_id: None,
            cluster: None,
            cluster_advertise: None,
            join: Vec::new(),
            voters: 3,
            node_timeout: 10.0,
            cluster_retain_max_size: 1 << 20,
            raft_snapshot_logs: 5000,
            drain_timeout: 15.0,
            cluster_tls_cert: None,
            cluster_tls_key: None,
            cluster_tls_ca: None,
        }
    }
}

/// The flags of `skein serve`: one per key, each also read from `SKEIN_<KEY>`. A negative number is taken as a
/// flag's value, so that `--sys-interval -1` is refused for its value rather than as an unknown argument.
#[derive(Debug, Args, Default)]
#[command(allow_negative_numbers = true)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (underscores, e.g. `max_queued_messages = 100`); a `.conf` file is
    /// read as a Mosquitto configuration (`listener 1883`, `password_file /etc/mosquitto/passwd`, ...).
    #[arg(short = 'c', long, env = "SKEIN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// MQTT over TCP listen address; repeat for more [default: 127.0.0.1:1883, local only, anonymous allowed].
    #[arg(long, env = "SKEIN_MQTT", value_name = "ADDR", value_delimiter = ',')]
    pub mqtt: Vec<SocketAddr>,
    /// MQTT over TLS listen address (needs --tls-cert and --tls-key); repeat for more.
    #[arg(long, env = "SKEIN_MQTTS", value_name = "ADDR", value_delimiter = ',')]
    pub mqtts: Vec<SocketAddr>,
    /// MQTT over WebSocket listen address (path /mqtt); repeat for more.
    #[arg(long, env = "SKEIN_WS", value_name = "ADDR", value_delimiter = ',')]
    pub ws: Vec<SocketAddr>,
    /// Connections one listener takes at a time, as ADDR=N (the listener's address as given); repeat for more.
    #[arg(long, env = "SKEIN_LISTENER_MAX_CONNECTIONS", value_name = "ADDR=N", value_delimiter = ',')]
    pub listener_max_connections: Vec<String>,
    /// MQTT over secure WebSocket listen address (needs --tls-cert and --tls-key); repeat for more.
    #[arg(long, env = "SKEIN_WSS", value_name = "ADDR", value_delimiter = ',')]
    pub wss: Vec<SocketAddr>,
    /// PEM certificate chain of the TLS listeners (reloaded when it changes).
    #[arg(long, env = "SKEIN_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "SKEIN_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate: TLS clients must show a certificate it signed (mutual TLS).
    #[arg(long, env = "SKEIN_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// The lowest TLS version the TLS listeners take: tlsv1.3, or tlsv1.2 for 1.2 and 1.3 (tlsv1.1 takes the same:
    /// TLS 1.1 is not offered at all) [default: tlsv1.2].
    #[arg(long, env = "SKEIN_TLS_VERSION", value_name = "VERSION")]
    pub tls_version: Option<TlsVersion>,
    /// Use the TLS client certificate's Common Name as the user name (needs --tls-client-ca) [default: false].
    #[arg(long, env = "SKEIN_USE_IDENTITY_AS_USERNAME", value_name = "BOOL")]
    pub use_identity_as_username: Option<bool>,
    /// HTTP listen address for /healthz and /readyz [default: off].
    #[arg(long, env = "SKEIN_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Directory for retained messages and persistent sessions [default: ./skein-data].
    #[arg(long, env = "SKEIN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep state on disk (true) or in memory only (false) [default: true].
    #[arg(long, env = "SKEIN_PERSISTENCE", value_name = "BOOL")]
    pub persistence: Option<bool>,
    /// Accept clients that send no user name [default: false once a --mqtt listener is given; true without].
    #[arg(long, env = "SKEIN_ALLOW_ANONYMOUS", value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,
    /// Mosquitto password file; clients with a user name must match it (reloaded on SIGHUP).
    #[arg(long, env = "SKEIN_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file (reloaded on SIGHUP).
    #[arg(long, env = "SKEIN_ACL_FILE", value_name = "FILE")]
    pub acl_file: Option<PathBuf>,
    /// Log lines as text or JSON [default: text].
    #[arg(long, env = "SKEIN_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level or tracing filter [default: info].
    #[arg(long, env = "SKEIN_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// QoS 1/2 messages in flight to one client; 0 = no limit [default: 20].
    #[arg(long, env = "SKEIN_MAX_INFLIGHT_MESSAGES", value_name = "N")]
    pub max_inflight_messages: Option<usize>,
    /// Messages queued per client beyond those in flight; 0 = no limit [default: 1000].
    #[arg(long, env = "SKEIN_MAX_QUEUED_MESSAGES", value_name = "N")]
    pub max_queued_messages: Option<usize>,
    /// Payload bytes queued per client beyond those in flight; while under it, a message is queued; 0 = no limit
    /// [default: 0].
    #[arg(long, env = "SKEIN_MAX_QUEUED_BYTES", value_name = "BYTES")]
    pub max_queued_bytes: Option<usize>,
    /// Largest payload accepted, bytes; 0 = no limit [default: 0].
    #[arg(long, env = "SKEIN_MESSAGE_SIZE_LIMIT", value_name = "BYTES")]
    pub message_size_limit: Option<usize>,
    /// Largest packet accepted from a client, bytes; 0 = MQTT's maximum [default: 0].
    #[arg(long, env = "SKEIN_MAX_PACKET_SIZE", value_name = "BYTES")]
    pub max_packet_size: Option<usize>,
    /// Concurrent clients; -1 = no limit [default: -1].
    #[arg(long, env = "SKEIN_MAX_CONNECTIONS", value_name = "N", allow_hyphen_values = true)]
    pub max_connections: Option<i64>,
    /// Largest keep alive a client may ask for, seconds [default: 65535].
    #[arg(long, env = "SKEIN_MAX_KEEPALIVE", value_name = "SECONDS")]
    pub max_keepalive: Option<u16>,
    /// Seconds between $SYS updates; 0 = off [default: 10].
    #[arg(long, env = "SKEIN_SYS_INTERVAL", value_name = "SECONDS")]
    pub sys_interval: Option<u64>,
    /// Queue QoS 0 messages for offline persistent sessions [default: false].
    #[arg(long, env = "SKEIN_QUEUE_QOS0_MESSAGES", value_name = "BOOL")]
    pub queue_qos0_messages: Option<bool>,
    /// Give a client that connects with an empty client id one (MQTT 3.1.1 with a clean session, MQTT 5.0); false
    /// refuses it: identifier rejected [default: true].
    #[arg(long, env = "SKEIN_ALLOW_ZERO_LENGTH_CLIENTID", value_name = "BOOL")]
    pub allow_zero_length_clientid: Option<bool>,
    /// The start of the client ids given to clients that sent none [default: skein-].
    #[arg(long, env = "SKEIN_AUTO_ID_PREFIX", value_name = "TEXT")]
    pub auto_id_prefix: Option<String>,
    /// Only clients whose client id starts with this may connect; others are refused as not authorised
    /// [default: any].
    #[arg(long, env = "SKEIN_CLIENTID_PREFIXES", value_name = "TEXT")]
    pub clientid_prefixes: Option<String>,
    /// A client's user name is its client id, whatever id it sent; a client without one is refused as not
    /// authorised [default: false].
    #[arg(long, env = "SKEIN_USE_USERNAME_AS_CLIENTID", value_name = "BOOL")]
    pub use_username_as_clientid: Option<bool>,
    /// How long an MQTT 3.x persistent session (Clean Session 0) is kept after its client disconnects: seconds, or
    /// a number and h, d, w, m (30 days) or y (365 days), as Mosquitto writes it (`14d`); 0: for ever. MQTT 5.0
    /// clients set their own Session Expiry Interval [default: 0].
    #[arg(long, env = "SKEIN_PERSISTENT_CLIENT_EXPIRATION", value_name = "DURATION")]
    pub persistent_client_expiration: Option<Expiration>,
    /// Accept retained messages [default: true].
    #[arg(long, env = "SKEIN_RETAIN_AVAILABLE", value_name = "BOOL")]
    pub retain_available: Option<bool>,
    /// Topic aliases an MQTT 5.0 client may use per connection; 0 turns them off [default: 10].
    #[arg(long, env = "SKEIN_MAX_TOPIC_ALIAS", value_name = "N")]
    pub max_topic_alias: Option<u16>,
    /// The highest QoS clients may publish or be granted: 0, 1 or 2 [default: 2].
    #[arg(long, env = "SKEIN_MAX_QOS", value_name = "QOS")]
    pub max_qos: Option<u8>,
    /// Seconds a new connection has to complete its TLS handshake and send CONNECT [default: 10].
    #[arg(long, env = "SKEIN_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub connect_timeout: Option<f64>,
    /// Seconds a plain TCP connection may have nothing to read or send before it parks: its task and its socket's
    /// registration are given back (about 1 KB), and it is woken by its socket, its session or its keep alive;
    /// 0: never [default: 15].
    #[arg(long, env = "SKEIN_IDLE_PARK_AFTER", value_name = "SECONDS")]
    pub idle_park_after: Option<f64>,
    /// Levels a topic name or filter may have; 0: no limit [default: 128].
    #[arg(long, env = "SKEIN_MAX_TOPIC_LEVELS", value_name = "N")]
    pub max_topic_levels: Option<usize>,
    /// Bytes a topic name or filter may have; 0: the protocol's 65,535 [default: 0].
    #[arg(long, env = "SKEIN_MAX_TOPIC_LENGTH", value_name = "BYTES")]
    pub max_topic_length: Option<usize>,
    /// Subscriptions one client may hold; 0: no limit [default: 0].
    #[arg(long, env = "SKEIN_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// New connections accepted per second over all listeners; 0: no limit [default: 0].
    #[arg(long, env = "SKEIN_MAX_CONNECTION_RATE", value_name = "PER_SECOND")]
    pub max_connection_rate: Option<f64>,
    /// PUBLISH packets read per second from one client; 0: no limit [default: 0].
    #[arg(long, env = "SKEIN_MAX_PUBLISH_RATE", value_name = "PER_SECOND")]
    pub max_publish_rate: Option<f64>,
    /// Node id in a cluster [default: the StatefulSet ordinal of the host name, else 1].
    #[arg(long, env = "SKEIN_NODE_ID", value_name = "N")]
    pub node_id: Option<u64>,
    /// Listen address for the node-to-node gRPC service; turns clustering on [default: off].
    #[arg(long, env = "SKEIN_CLUSTER", value_name = "ADDR")]
    pub cluster: Option<SocketAddr>,
    /// Address peers reach this node's cluster service at, as the join list names it [default: --cluster; needed
    /// when that is 0.0.0.0].
    #[arg(long, env = "SKEIN_CLUSTER_ADVERTISE", value_name = "HOST:PORT")]
    pub cluster_advertise: Option<String>,
    /// Seed nodes' cluster addresses, comma separated; the same list on every seed forms one cluster.
    #[arg(long, env = "SKEIN_JOIN", value_name = "ADDR,ADDR", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Voters the cluster keeps; further nodes are learners [default: 3].
    #[arg(long, env = "SKEIN_VOTERS", value_name = "N")]
    pub voters: Option<usize>,
    /// Seconds a silent member keeps its routes before they are purged [default: 10].
    #[arg(long, env = "SKEIN_NODE_TIMEOUT", value_name = "SECONDS")]
    pub node_timeout: Option<f64>,
    /// Largest retained payload a cluster keeps, in bytes; larger retained publishes are refused (0: no limit)
    /// [default: 1048576].
    #[arg(long, env = "SKEIN_CLUSTER_RETAIN_MAX_SIZE", value_name = "BYTES")]
    pub cluster_retain_max_size: Option<usize>,
    /// Raft log entries between snapshots; the log before one is compacted [default: 5000].
    #[arg(long, env = "SKEIN_RAFT_SNAPSHOT_LOGS", value_name = "N")]
    pub raft_snapshot_logs: Option<u64>,
    /// Seconds a stopping cluster node waits for the clients it closed to resume their persistent sessions on
    /// other nodes, which take them from it meanwhile [default: 15].
    #[arg(long, env = "SKEIN_DRAIN_TIMEOUT", value_name = "SECONDS")]
    pub drain_timeout: Option<f64>,
    /// This node's certificate (PEM) for mutual TLS between peers; with --cluster-tls-key and --cluster-tls-ca.
    #[arg(long, env = "SKEIN_CLUSTER_TLS_CERT", value_name = "PEM")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM) for mutual TLS between peers.
    #[arg(long, env = "SKEIN_CLUSTER_TLS_KEY", value_name = "PEM")]
    pub cluster_tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, env = "SKEIN_CLUSTER_TLS_CA", value_name = "PEM")]
    pub cluster_tls_ca: Option<PathBuf>,
}

impl ServeArgs {
    /// Defaults, then the file, then environment and flags.
    pub fn resolve(&self) -> Result<Config, String> {
        let mut c = match &self.config {
            Some(path) => load_file(path)?,
            None => Config::default(),
        };
        if !self.mqtt.is_empty() {
            c.mqtt = self.mqtt.clone();
        }
        if !self.mqtts.is_empty() {
            c.mqtts = self.mqtts.clone();
        }
        if !self.ws.is_empty() {
            c.ws = self.ws.clone();
        }
        if !self.wss.is_empty() {
            c.wss = self.wss.clone();
        }
        if !self.listener_max_connections.is_empty() {
            c.listener_max_connections = self.listener_max_connections.clone();
        }
        if let Some(v) = self.tls_version {
            c.tls_version = v;
        }
        for (dst, src) in [
            (&mut c.tls_cert, &self.tls_cert),
            (&mut c.tls_key, &self.tls_key),
            (&mut c.tls_client_ca, &self.tls_client_ca),
        ] {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        if let Some(b) = self.use_identity_as_username {
            c.use_identity_as_username = b;
        }
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone(); } )* };
        }
        take!(
            data_dir,
            persistence,
            log_format,
            log_level,
            max_inflight_messages,
            max_queued_messages,
            max_queued_bytes,
            message_size_limit,
            max_packet_size,
            max_connections,
            max_keepalive,
            sys_interval,
            queue_qos0_messages,
            allow_zero_length_clientid,
            auto_id_prefix,
            clientid_prefixes,
            use_username_as_clientid,
            persistent_client_expiration,
            retain_available,
            max_topic_alias,
            max_qos,
            connect_timeout,
            idle_park_after,
            max_topic_levels,
            max_topic_length,
            max_subscriptions,
            max_connection_rate,
            max_publish_rate
        );
        if self.http.is_some() {
            c.http = self.http;
        }
        if self.allow_anonymous.is_some() {
            c.allow_anonymous = self.allow_anonymous;
        }
        if self.password_file.is_some() {
            c.password_file = self.password_file.clone();
        }
        if self.acl_file.is_some() {
            c.acl_file = self.acl_file.clone();
        }
        if !self.join.is_empty() {
            c.join = self.join.clone();
        }
        if self.node_id.is_some() {
            c.node_id = self.node_id;
        }
        if self.cluster.is_some() {
            c.cluster = self.cluster;
        }
        if self.cluster_advertise.is_some() {
            c.cluster_advertise = self.cluster_advertise.clone();
        }
        if let Some(v) = self.voters {
            c.voters = v;
        }
        if let Some(t) = self.node_timeout {
            c.node_timeout = t;
        }
        if let Some(n) = self.cluster_retain_max_size {
            c.cluster_retain_max_size = n;
        }
        if let Some(n) = self.raft_snapshot_logs {
            c.raft_snapshot_logs = n;
        }
        if let Some(t) = self.drain_timeout {
            c.drain_timeout = t;
        }
        for (dst, src) in [
            (&mut c.cluster_tls_cert, &self.cluster_tls_cert),
            (&mut c.cluster_tls_key, &self.cluster_tls_key),
            (&mut c.cluster_tls_ca, &self.cluster_tls_ca),
        ] {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        c.check()?;
        Ok(c)
    }
}

fn load_file(path: &Path) -> Result<Config, String> {
    if path.extension().is_some_and(|e| e == "conf") {
        return crate::mosquitto_conf::load(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "config file {}: {}\nfix or remove that key; `skein serve --help` lists every key and its default",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

impl Config {
    /// The PEM contents for peer TLS, read now so that a bad path stops start-up with its name.
    pub fn peer_tls(&self) -> Option<skein_cluster::peer_tls::PeerTls> {
        Some(skein_cluster::peer_tls::PeerTls {
            cert: self.cluster_tls_cert.clone()?,
            key: self.cluster_tls_key.clone()?,
            ca: self.cluster_tls_ca.clone()?,
        })
    }

    /// No listener given: Mosquitto 2.0's local only mode.
    pub fn local_only(&self) -> bool {
        self.mqtt.is_empty() && self.mqtts.is_empty() && self.ws.is_empty() && self.wss.is_empty()
    }

    /// The TLS files of the `mqtts` listeners, if there are any.
    pub fn tls_files(&self) -> Option<skein_broker::tls::TlsFiles> {
        Some(skein_broker::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
            tls13_only: self.tls_version == TlsVersion::Tls13,
        })
    }

    /// The MQTT listen addresses: the ones given, or 127.0.0.1:1883 in local only mode.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        if self.local_only() { vec![SocketAddr::from(([127, 0, 0, 1], 1883))] } else { self.mqtt.clone() }
    }

    /// Mosquitto 2.0's rule: anonymous clients are refused unless allowed, except in local only mode.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.local_only())
    }

    /// The node id: as configured, else the ordinal at the end of the host name (`skein-2`), else 1.
    pub fn node_id(&self) -> u64 {
        self.node_id.unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .and_then(|h| h.trim().rsplit_once('-').and_then(|(_, n)| n.parse().ok()))
                .unwrap_or(1)
        })
    }

    /// The `listener_max_connections` entries: listener address to limit.
    fn listener_limits(&self) -> Result<Vec<(SocketAddr, usize)>, String> {
        let listeners: Vec<&SocketAddr> =
            self.mqtt.iter().chain(&self.mqtts).chain(&self.ws).chain(&self.wss).collect();
        self.listener_max_connections
            .iter()
            .map(|entry| {
                let bad = || format!("listener_max_connections {entry:?}: write ADDR=N, e.g. 0.0.0.0:1883=1000");
                let (addr, n) = entry.split_once('=').ok_or_else(bad)?;
                let addr: SocketAddr = addr.trim().parse().map_err(|_| bad())?;
                let n: usize = n.trim().parse().map_err(|_| bad())?;
                if !listeners.contains(&&addr) {
                    return Err(format!(
                        "listener_max_connections names {addr}, which is not one of the listeners (mqtt, mqtts, ws, wss)"
                    ));
                }
                Ok((addr, n))
            })
            .collect()
    }

    /// Connections the listener on `addr` (as configured) takes at a time; 0: no limit of its own.
    pub fn listener_limit(&self, addr: SocketAddr) -> usize {
        let limits = self.listener_limits().unwrap_or_default();
        limits.iter().rev().find(|(a, _)| *a == addr).map_or(0, |(_, n)| *n)
    }

    fn check(&self) -> Result<(), String> {
        self.listener_limits()?;
        if self.max_connections < -1 {
            return Err(format!("max_connections = {}: use -1 (no limit) or a positive number", self.max_connections));
        }
        if self.cluster.is_none() && !self.join.is_empty() {
            return Err("join is set but cluster is not: give `--cluster ADDR` to listen for peers".into());
        }
        if let Some(listen) = self.cluster.filter(|a| a.ip().is_unspecified())
            && self.cluster_advertise.is_none()
        {
            return Err(format!(
                "cluster = {listen} is no address peers can reach: give cluster_advertise (--cluster-advertise \
                 HOST:PORT), the address the other nodes use for this one, as the join list names it"
            ));
        }
        let tls = [&self.cluster_tls_cert, &self.cluster_tls_key, &self.cluster_tls_ca];
        if tls.iter().any(|t| t.is_some()) && !tls.iter().all(|t| t.is_some()) {
            return Err("cluster TLS needs all three of cluster_tls_cert, cluster_tls_key and cluster_tls_ca".into());
        }
        if !(self.drain_timeout.is_finite() && (0.0..1e6).contains(&self.drain_timeout)) {
            return Err(format!("drain_timeout = {}: use a number of seconds, 0 or more", self.drain_timeout));
        }
        if !(self.node_timeout.is_finite() && self.node_timeout > 0.0) {
            return Err(format!("node_timeout = {}: use a number of seconds above 0", self.node_timeout));
        }
        if !(self.mqtts.is_empty() && self.wss.is_empty()) && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("mqtts and wss need tls_cert and tls_key (--tls-cert PEM --tls-key PEM)".into());
        }
        if self.use_identity_as_username && self.tls_client_ca.is_none() {
            return Err("use_identity_as_username needs tls_client_ca: only a verified certificate names a user".into());
        }
        let level = self.log_level.trim();
        let known = ["trace", "debug", "info", "warn", "error", "off"];
        let usable = if level.contains('=') {
            tracing_subscriber::EnvFilter::try_new(level).is_ok()
        } else {
            known.contains(&level.to_ascii_lowercase().as_str())
        };
        if !usable {
            // A word the filter syntax takes as a target name would silence every log line.
            return Err(format!(
                "log_level = {level:?}: use trace, debug, info, warn, error or off, or a filter such as \
                 `info,skein_cluster=debug`"
            ));
        }
        if !(self.connect_timeout.is_finite() && self.connect_timeout > 0.0 && self.connect_timeout < 1e6) {
            return Err(format!("connect_timeout = {}: use a number of seconds above 0", self.connect_timeout));
        }
        if !(self.idle_park_after.is_finite() && self.idle_park_after >= 0.0 && self.idle_park_after < 1e6) {
            return Err(format!(
                "idle_park_after = {}: use a number of seconds, 0 to keep every connection in a task",
                self.idle_park_after
            ));
        }
        for (key, v) in [("max_connection_rate", self.max_connection_rate), ("max_publish_rate", self.max_publish_rate)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} = {v}: use a rate per second, or 0 for no limit"));
            }
        }
        if self.max_qos > 2 {
            return Err(format!("max_qos = {}: use 0, 1 or 2", self.max_qos));
        }
        if self.raft_snapshot_logs == 0 {
            return Err("raft_snapshot_logs = 0: use a number of log entries above 0 (default 5000)".into());
        }
        if self.voters == 0 {
            return Err("voters = 0: a cluster needs at least one voter".into());
        }
        if self.max_packet_size != 0 && self.max_packet_size < 16 {
            return Err(format!(
                "max_packet_size = {}: too small for any MQTT packet; use 0 (no limit) or more",
                self.max_packet_size
            ));
        }
        Ok(())
    }

    pub fn broker(&self) -> skein_broker::BrokerConfig {
        skein_broker::BrokerConfig {
            allow_anonymous: self.anonymous_allowed(),
            max_inflight_messages: self.max_inflight_messages,
            max_queued_messages: self.max_queued_messages,
            max_queued_bytes: self.max_queued_bytes,
            message_size_limit: self.message_size_limit,
            max_packet_size: self.max_packet_size,
            max_connections: usize::try_from(self.max_connections).unwrap_or(0),
            max_keepalive: self.max_keepalive,
            sys_interval: Duration::from_secs(self.sys_interval),
            queue_qos0_messages: self.queue_qos0_messages,
            allow_zero_length_clientid: self.allow_zero_length_clientid,
            auto_id_prefix: self.auto_id_prefix.clone(),
            clientid_prefixes: self.clientid_prefixes.clone(),
            use_username_as_clientid: self.use_username_as_clientid,
            persistent_client_expiration: (self.persistent_client_expiration.0 > 0)
                .then(|| Duration::from_secs(self.persistent_client_expiration.0)),
            retain_available: self.retain_available,
            max_topic_alias: self.max_topic_alias,
            max_qos: match self.max_qos {
                0 => skein_codec::QoS::AtMostOnce,
                1 => skein_codec::QoS::AtLeastOnce,
                _ => skein_codec::QoS::ExactlyOnce,
            },
            connect_timeout: Duration::from_secs_f64(self.connect_timeout),
            idle_park_after: (self.idle_park_after > 0.0).then(|| Duration::from_secs_f64(self.idle_park_after)),
            max_topic_levels: self.max_topic_levels,
            max_topic_length: self.max_topic_length,
            max_subscriptions: self.max_subscriptions,
            max_connection_rate: self.max_connection_rate,
            max_publish_rate: self.max_publish_rate,
        }
    }
}

/// A session lifetime in seconds (0: for ever), written as seconds or as Mosquitto's `persistent_client_expiration`
/// writes it: a number and a unit, h, d, w, m (30 days) or y (365 days).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiration(pub u64);

impl std::str::FromStr for Expiration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (number, unit) = match t.char_indices().last() {
            Some((i, u)) if u.is_ascii_alphabetic() => (&t[..i], Some(u)),
            _ => (t, None),
        };
        let scale: u64 = match unit {
            None => 1,
            Some('h') => 3600,
            Some('d') => 86_400,
            Some('w') => 7 * 86_400,
            Some('m') => 30 * 86_400,
            Some('y') => 365 * 86_400,
            Some(_) => 0,
        };
        match number.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)).filter(|_| scale > 0) {
            Some(seconds) => Ok(Expiration(seconds)),
            None => Err(format!(
                "`{text}` is no duration: use seconds, or a number and h, d, w, m or y (`14d`); 0 keeps sessions for ever"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Expiration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Seconds(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Seconds(s) => Ok(Expiration(s)),
            Written::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_read_as_seconds_or_as_mosquitto_writes_them() {
        let read = |t: &str| t.parse::<Expiration>().map(|e| e.0);
        assert_eq!(read("90"), Ok(90));
        assert_eq!(read("2h"), Ok(7200));
        assert_eq!(read("14d"), Ok(14 * 86_400));
        assert_eq!(read("1w"), Ok(604_800));
        assert_eq!(read("2m"), Ok(60 * 86_400));
        assert_eq!(read("1y"), Ok(365 * 86_400));
        assert_eq!(read("0"), Ok(0));
        for bad in ["", "d", "3x", "-1h", "1.5d"] {
            assert!(read(bad).unwrap_err().contains("no duration"), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skein.toml");
        std::fs::write(&path, "persistent_client_expiration = \"1d\"\nauto_id_prefix = \"dev-\"\n").unwrap();
        let c = ServeArgs { config: Some(path.clone()), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.broker().persistent_client_expiration, Some(Duration::from_secs(86_400)));
        assert_eq!(c.broker().auto_id_prefix, "dev-");
        std::fs::write(&path, "persistent_client_expiration = 30\n").unwrap();
        let c = ServeArgs { config: Some(path), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.broker().persistent_client_expiration, Some(Duration::from_secs(30)));
        assert_eq!(Config::default().broker().persistent_client_expiration, None);
    }

    #[test]
    fn unknown_key_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skein.toml");
        std::fs::write(&path, "max_queued_messages = 10\nmax_queud_messages = 5\n").unwrap();
        let args = ServeArgs { config: Some(path), ..Default::default() };
        let err = args.resolve().unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("max_queud_messages"), "{err}");
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skein.toml");
        std::fs::write(&path, "max_queued_messages = 10\nmax_inflight_messages = 3\nmqtt = [\"127.0.0.1:1999\"]\n")
            .unwrap();
        let args = ServeArgs { config: Some(path), max_inflight_messages: Some(7), ..Default::default() };
        let c = args.resolve().unwrap();
        assert_eq!(c.max_queued_messages, 10);
        assert_eq!(c.max_inflight_messages, 7);
        assert_eq!(c.mqtt, vec!["127.0.0.1:1999".parse().unwrap()]);
        assert_eq!(c.data_dir, PathBuf::from("skein-data"));
    }

    #[test]
    fn bad_values_are_refused() {
        let args = ServeArgs { max_connections: Some(-5), ..Default::default() };
        assert!(args.resolve().unwrap_err().contains("max_connections"));
        let args = ServeArgs { max_qos: Some(3), ..Default::default() };
        assert!(args.resolve().unwrap_err().contains("max_qos = 3: use 0, 1 or 2"));
        let c = ServeArgs { max_qos: Some(1), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.broker().max_qos, skein_codec::QoS::AtLeastOnce);
    }

    #[test]
    fn a_log_level_that_would_silence_every_line_stops_start_up() {
        for bad in ["verbose", "warnings", "skein=["] {
            let err = ServeArgs { log_level: Some(bad.into()), ..Default::default() }.resolve().unwrap_err();
            assert!(err.contains("use trace, debug, info, warn, error or off"), "{bad}: {err}");
        }
        for good in ["debug", "WARN", "info,skein_cluster=debug"] {
            assert!(ServeArgs { log_level: Some(good.into()), ..Default::default() }.resolve().is_ok(), "{good}");
        }
    }

    #[test]
    fn idle_park_after_is_seconds_and_zero_turns_it_off() {
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(c.broker().idle_park_after, Some(Duration::from_secs(15)));
        let c = ServeArgs { idle_park_after: Some(0.5), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.broker().idle_park_after, Some(Duration::from_millis(500)));
        let c = ServeArgs { idle_park_after: Some(0.0), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.broker().idle_park_after, None);
        let args = ServeArgs { idle_park_after: Some(-1.0), ..Default::default() };
        assert!(args.resolve().unwrap_err().contains("idle_park_after = -1: use a number of seconds"));
    }
}
