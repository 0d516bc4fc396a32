//! `skein`: the broker's command line.

mod config;
mod http;
mod metrics;
mod mosquitto_conf;
mod quiet;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use skein_broker::{Broker, Cluster, SingleNode};
use skein_cluster::node::{ClusterConfig, ClusterNode};
use tokio::net::TcpListener;

use crate::config::{Config, LogFormat, ServeArgs};

/// mimalloc, not the system allocator: with glibc's, a persistent-session QoS 1 load spent about a third of the
/// broker's CPU in malloc and free and in waking threads blocked on its arena locks (sled allocates and frees a
/// lot, on threads of its own). Measured side by side on 2 cores: persistent QoS 1 twice the throughput at 1.7x
/// the messages per CPU-second, p2p QoS 1 +20-30%, QoS 0 +10%. Its version 2 (the `v2` feature), not 3: with 3,
/// memory freed when idle connections park stayed in the process (RSS per idle connection in the `conn` benchmark
/// 2,270-2,540 bytes, against 1,490 with version 2), at the same throughput and CPU per message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set before `main`, ahead of the first allocation (which reserves mimalloc's arena): see `commit_on_demand`.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static COMMIT_ON_DEMAND: extern "C" fn() = commit_on_demand;

/// Has mimalloc commit its arena as it is used rather than all at once. On Linux it otherwise commits its whole
/// arena (1 GiB of address space) up front and marks it for transparent huge pages (`MADV_HUGEPAGE`), so the
/// kernel makes each 2 MiB the broker touches resident as one huge page: every thread's heap, and every region a
/// burst of connects reached, cost 2 MiB of RSS however little of it held live memory (8 MiB of `AnonHugePages`
/// at start). Committed on demand, memory is resident 4 KiB at a time. Measured with 15,000 idle connections (the
/// `conn` benchmark): RSS per connection from about 1,450 to about 1,150 bytes, and 6 MB less at start. Throughput
/// was within run-to-run noise (p2p QoS 0 and fan-out to 1,000, alternating binaries, 6 runs each).
#[cfg(target_os = "linux")]
extern "C" fn commit_on_demand() {
    /// `mi_option_arena_eager_commit` in mimalloc.h (version 2); `libmimalloc-sys` names no constant for it.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: mimalloc's own API; setting an option is allowed at any time, and this runs before any thread.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
}

/// Called by each runtime worker as it goes idle: at most once a second, hands the allocator's free memory of that
/// thread back to the system. mimalloc does that work (taking in what other threads freed of this thread's memory,
/// releasing pages that have emptied) only when the thread allocates again, so a worker that goes quiet after a
/// burst (thousands of clients that connected and then parked) kept it resident. Measured with 15,000 idle
/// connections (the `conn` benchmark), binaries alternating: 54-127 bytes less RSS per connection.
fn give_back_idle_memory() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| {
        let now = std::time::Instant::now();
        if last.get().is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
            last.set(Some(now));
            // SAFETY: mimalloc's own API, callable from any thread at any time; `false`: no forced release of
            // memory still in use by the thread's caches.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
}

/// The allocator's memory, for `$SYS/broker/heap/*`: what mimalloc has committed now, and at most. With the arena
/// committed on demand (`commit_on_demand`) that follows the heap the broker uses, give or take the pages mimalloc
/// keeps for reuse.
fn heap_usage() -> (u64, u64) {
    let (mut elapsed, mut user, mut system, mut rss, mut peak_rss, mut commit, mut peak_commit, mut faults) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    // SAFETY: mimalloc's own API; every pointer is to a live local.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed,
            &mut user,
            &mut system,
            &mut rss,
            &mut peak_rss,
            &mut commit,
            &mut peak_commit,
            &mut faults,
        )
    };
    (commit as u64, peak_commit as u64)
}

#[derive(Parser)]
#[command(name = "skein", version, about = "A clustered MQTT broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. With no flags: MQTT on 127.0.0.1:1883 (local only), state under ./skein-data.
    Serve(Box<ServeArgs>),
    /// Manage a password file, as mosquitto_passwd does (the files are the same).
    Passwd(skein_auth::passwd::PasswdArgs),
    /// Ask a running node about its cluster, or tell it to leave.
    Cluster {
        /// The node's HTTP address (its --http).
        #[arg(long, env = "SKEIN_HTTP", default_value = "127.0.0.1:8080", global = true)]
        http: String,
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Members, roles, leader, term and applied index, as that node sees them.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Which node holds a client's persistent session, as the cluster's registry has it.
    Client {
        /// The client id.
        id: String,
    },
    /// Remove the node from the cluster (its routes and its place), then shut it down.
    Leave,
    /// Remove another member that cannot leave by itself (gone for good): its place, routes and sessions. A voter's
    /// place passes to a learner, so the quorum survives further failures.
    Remove {
        /// The member's node id.
        id: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Cluster { http, action } => match cluster_command(&http, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("skein: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Passwd(args) => match skein_auth::passwd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("skein passwd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let config = match args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("skein: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            skein_broker::sys::set_heap_usage(heap_usage);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .on_thread_park(give_back_idle_memory)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("skein: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("skein: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `skein cluster status|client|leave|remove`: one HTTP request to the node.
fn cluster_command(http: &str, action: ClusterAction) -> Result<(), String> {
    use std::io::{Read, Write};
    let (method, path) = match &action {
        ClusterAction::Status { .. } => ("GET", "/cluster".to_string()),
        ClusterAction::Client { id } => ("GET", format!("/cluster/clients/{}", percent_encode(id))),
        ClusterAction::Leave => ("POST", "/cluster/leave".to_string()),
        ClusterAction::Remove { id } => ("POST", format!("/cluster/remove/{id}")),
    };
    let mut s = std::net::TcpStream::connect(http).map_err(|e| {
        format!("cannot reach the node's HTTP at {http}: {e} (start it with --http, or pass --http ADDR)")
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    write!(s, "{method} {path} HTTP/1.1\r\nhost: {http}\r\ncontent-length: 0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(body.trim().to_string());
    }
    match action {
        ClusterAction::Status { json: true }
        | ClusterAction::Client { .. }
        | ClusterAction::Leave
        | ClusterAction::Remove { .. } => print!("{body}"),
        ClusterAction::Status { json: false } => {
            let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
            println!(
                "node {}  state {}  leader {}  term {}  applied {}",
                v["node_id"],
                v["state"].as_str().unwrap_or("?"),
                v["leader"],
                v["term"],
                v["applied_index"]
            );
            println!("{:<6} {:<8} {:<24} {:<24} {:<8} sessions", "id", "role", "cluster", "mqtt", "routes");
            for m in v["members"].as_array().into_iter().flatten() {
                let id = m["id"].to_string();
                println!(
                    "{:<6} {:<8} {:<24} {:<24} {:<8} {}",
                    id,
                    m["role"].as_str().unwrap_or("?"),
                    m["cluster_addr"].as_str().unwrap_or("?"),
                    m["mqtt_addr"].as_str().unwrap_or("-"),
                    v["routes_per_node"][&id].to_string(),
                    v["sessions_per_node"][&id].as_u64().unwrap_or(0)
                );
            }
        }
    }
    Ok(())
}

/// `id` fit for a URL path: unreserved bytes as they are, the rest as `%XX`.
fn percent_encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn init_logging(config: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // A bare level keeps the Raft library's own chatter at warnings; a full filter is taken as it is.
    let directives = if config.log_level.contains('=') {
        config.log_level.clone()
    } else {
        // rustls warns of every client that sends an IP address as SNI (mosquitto clients given `-h 127.0.0.1` do):
        // harmless, and a client could fill the log with it.
        format!("{},openraft=warn,rustls=error", config.log_level)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(quiet::QuietRaft::new(quiet::EVERY));
    match config.log_format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let mut signals = Signals::install();
    let data_dir = config.persistence.then_some(config.data_dir.as_path());
    if let Some(dir) = data_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    }
    let mut listeners_bound = Vec::new();
    let auth = load_auth(&config)?;
    if config.local_only() {
        tracing::warn!(
            "local only mode: listening on 127.0.0.1:1883 with anonymous clients allowed; give --mqtt ADDR (and a \
             password_file, or allow_anonymous true) to accept clients from other machines"
        );
    }
    for addr in &config.listeners() {
        let l = listen(*addr).map_err(|e| format!("cannot listen for MQTT on {addr}: {e}"))?;
        listeners_bound.push((*addr, l));
    }
    let mqtt_local = listeners_bound.first().and_then(|(_, l)| l.local_addr().ok());
    let node = match config.cluster {
        Some(listen) => {
            let advertise = config.cluster_advertise.clone().unwrap_or_else(|| listen.to_string());
            let cluster_config = ClusterConfig {
                node_id: config.node_id(),
                listen,
                mqtt_advertise: mqtt_local.map(|a| mqtt_advertise(a, &advertise)).unwrap_or_default(),
                advertise,
                join: config.join.clone(),
                voters: config.voters,
                snapshot_logs: config.raft_snapshot_logs,
                node_timeout: Duration::from_secs_f64(config.node_timeout),
                retain_max_size: config.cluster_retain_max_size,
                tls: config.peer_tls(),
                data_dir: config.data_dir.clone(),
            };
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
            Some(ClusterNode::new(cluster_config).await.map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let cluster: Arc<dyn Cluster> = match &node {
        Some(n) => n.clone(),
        None => Arc::new(SingleNode),
    };
    let broker = Broker::open(config.broker(), data_dir, cluster).map_err(|e| {
        let e = e.to_string();
        // Only sled's lock held by another process points at another skein; anything else is the directory itself.
        let hint = if e.contains("could not acquire lock") { " (is another skein using this --data-dir?)" } else { "" };
        format!("cannot open the data in {}: {e}{hint}", config.data_dir.display())
    })?;
    // In force before the first client can connect.
    broker.set_auth(auth);
    if let Some(n) = &node {
        n.start(broker.clone()).await.map_err(|e| e.to_string())?;
    }
    let tls = match config.tls_files() {
        Some(files) if !(config.mqtts.is_empty() && config.wss.is_empty()) => {
            Some(skein_broker::tls::Reloading::new(files)?)
        }
        _ => None,
    };
    let mut tls_bound = Vec::new();
    for addr in &config.mqtts {
        let l = listen(*addr).map_err(|e| format!("cannot listen for MQTT over TLS on {addr}: {e}"))?;
        tls_bound.push((*addr, l));
    }
    let mut ws_bound = Vec::new();
    for (addr, secure) in config.ws.iter().map(|a| (a, false)).chain(config.wss.iter().map(|a| (a, true))) {
        let l = listen(*addr).map_err(|e| format!("cannot listen for MQTT over WebSocket on {addr}: {e}"))?;
        ws_bound.push((*addr, l, secure));
    }
    let limits = |addr| skein_broker::listener::Limits { max_connections: config.listener_limit(addr) };
    let mut listeners = Vec::new();
    for (addr, l, secure) in ws_bound {
        let local = l.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%local, tls = secure, "listening for MQTT over WebSocket");
        let tls = if secure { tls.clone() } else { None };
        listeners.push(tokio::spawn(skein_broker::listener::serve_ws(broker.clone(), l, limits(addr), tls)));
    }
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(Duration::from_secs(2)));
        for (addr, l) in tls_bound {
            let local = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(%local, mutual = config.tls_client_ca.is_some(), "listening for MQTT over TLS");
            let identity = config.use_identity_as_username;
            listeners.push(tokio::spawn(skein_broker::listener::serve_tls(
                broker.clone(),
                l,
                limits(addr),
                tls.clone(),
                identity,
            )));
        }
    }
    for (addr, l) in listeners_bound {
        let local = l.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%local, "listening for MQTT");
        listeners.push(tokio::spawn(skein_broker::listener::serve_tcp(broker.clone(), l, limits(addr))));
    }
    if let Some(addr) = config.http {
        let l = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
        let local = l.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%local, "listening for HTTP");
        tokio::spawn(http::serve(l, broker.clone(), node.clone()));
    }
    tokio::spawn(skein_broker::sys::run(broker.clone()));
    tokio::spawn(broker.clone().run_timers());
    match data_dir {
        Some(dir) => tracing::info!(data_dir = %dir.display(), version = env!("CARGO_PKG_VERSION"), "skein started"),
        None => tracing::info!(version = env!("CARGO_PKG_VERSION"), "skein started, persistence off"),
    }
    let anonymous = config.anonymous_allowed();
    match (anonymous, &config.password_file) {
        (true, _) if !config.local_only() => {
            tracing::warn!("anonymous clients are allowed (allow_anonymous = true)")
        }
        // With use_identity_as_username, a client certificate is the login.
        (false, None) if !config.use_identity_as_username => tracing::warn!(
            "allow_anonymous is false and there is no password_file: no client can connect; set one of them"
        ),
        _ => {}
    }

    let mut stop = broker.shutdown_signal();
    loop {
        tokio::select! {
            signal = signals.next() => if signal == Signal::Stop { break },
            // `skein cluster leave` shuts the node down from the inside.
            _ = stop.wait_for(|s| *s) => break,
        }
        {
            // SIGHUP: read the password and ACL files again; connections stay, a bad file keeps the old one.
            match load_auth(&config) {
                Ok(auth) => {
                    broker.set_auth(auth);
                    tracing::info!("password and ACL files reloaded");
                }
                Err(e) => tracing::error!("reload failed, keeping the files in force: {e}"),
            }
        }
    }
    // First, while its clients are still here: the clients closed next reconnect through the others, which then
    // need a leader to register their sessions (see `hand_off_leadership`).
    if let Some(n) = &node {
        n.hand_off_leadership(LEADERSHIP_HANDOFF).await;
    }
    tracing::info!("shutting down: closing connections");
    // In a cluster, the clients closed here reconnect through another node, which asks this one for their
    // persistent sessions: those are waited for (see `drain`), or their queued messages would stay behind.
    // A node that left has no peers to hand sessions to: its clients start afresh where they reconnect.
    let moving = match &node {
        Some(n) if !n.has_left() => broker.connected_persistent_sessions(),
        _ => Vec::new(),
    };
    broker.begin_shutdown();
    for l in listeners {
        let _ = l.await;
    }
    if !broker.wait_closed(Duration::from_secs(10)).await {
        tracing::warn!(open = broker.open_connections(), "connections still open after 10 s; stopping anyway");
    }
    drain(&broker, node.as_deref(), moving, Duration::from_secs_f64(config.drain_timeout)).await;
    broker.keep_unreleased_qos2();
    broker.flush().await.map_err(|e| format!("final flush of the data store failed: {e}"))?;
    if let Some(n) = &node {
        let _ = n.raft.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The MQTT address other nodes and `cluster status` show for this node: the listener's, with the host it
/// advertises to its peers when it listens on every address (0.0.0.0 says nothing about where clients reach it).
fn mqtt_advertise(mqtt: std::net::SocketAddr, cluster_advertise: &str) -> String {
    if !mqtt.ip().is_unspecified() {
        return mqtt.to_string();
    }
    match cluster_advertise.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{}", mqtt.port()),
        None => mqtt.to_string(),
    }
}

/// How long a stopping leader tries to hand its leadership on: past the election timeout (2 s), the longest it may
/// have to wait before it can give its vote to a successor (see `hand_off_leadership`).
const LEADERSHIP_HANDOFF: Duration = Duration::from_secs(4);

/// Keeps the node answering its peers (not its MQTT listeners, closed by now) until the persistent sessions in
/// `moving` have been taken over by the nodes their clients reconnected to, or `limit` has passed. A client that
/// reconnects only after that starts afresh, as when a node goes down.
/// How long a stopping node waits, once its relays have ended, for the other nodes to take what it sent them.
const RELAYED_WAIT: Duration = Duration::from_secs(2);

async fn drain(broker: &Broker, node: Option<&ClusterNode>, moving: Vec<skein_codec::ByteString>, limit: Duration) {
    if moving.is_empty() || limit.is_zero() {
        return;
    }
    // A session that moved relays what still comes for it here until the routes to its new node are in place.
    let relaying = || node.map_or(0, |n| n.relaying());
    tracing::info!(
        sessions = moving.len(),
        "waiting up to {limit:?} for the persistent sessions of the clients closed here to move with them"
    );
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = moving.iter().filter(|id| broker.holds_session(id)).count();
        if left == 0 && relaying() == 0 {
            tracing::info!("every persistent session moved to the node its client reconnected to");
            // What the relays sent on last is taken by the new nodes before this node goes: the batches it came in
            // were not acknowledged before that, and a sender would give them again to this node's next run, which
            // has no session to take them.
            let sent = tokio::time::Instant::now() + RELAYED_WAIT;
            while node.is_some_and(|n| n.forward_pending() > 0) && tokio::time::Instant::now() < sent {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                left,
                "persistent sessions not resumed elsewhere in time; they stay here until this node returns"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

/// SIGTERM and SIGINT, registered before anything listens, so that a signal arriving during start-up stops the node
/// gracefully instead of killing it.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// The next signal: SIGTERM or SIGINT stop the node, SIGHUP reloads its files.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => Signal::Stop,
                _ = recv(&mut self.int) => Signal::Stop,
                _ = recv(&mut self.hup) => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// The password and ACL files the configuration names, read and checked.
fn load_auth(config: &Config) -> Result<skein_broker::auth::Auth, String> {
    let passwords = config.password_file.as_ref().map(skein_auth::PasswordFile::load).transpose();
    let acl = config.acl_file.as_ref().map(skein_auth::Acl::load).transpose();
    Ok(skein_broker::auth::Auth {
        passwords: passwords.map_err(|e| e.to_string())?,
        acl: acl.map_err(|e| e.to_string())?,
    })
}

/// A client listener with a deep accept backlog: the default (128) overflows in a reconnect storm, and a client
/// whose SYN is dropped waits a second or more to try again.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_node_listening_on_every_address_shows_the_host_it_advertises_to_its_peers() {
        let show = |mqtt: &str, peers: &str| super::mqtt_advertise(mqtt.parse().unwrap(), peers);
        assert_eq!(
            show("0.0.0.0:1883", "mq-skein-2.mq-skein-headless.mq.svc:7946"),
            "mq-skein-2.mq-skein-headless.mq.svc:1883"
        );
        assert_eq!(show("[::]:1883", "[fd00::7]:7946"), "[fd00::7]:1883");
        assert_eq!(show("10.0.0.3:1883", "mq-skein-2:7946"), "10.0.0.3:1883", "a listener on one address shows it");
    }

    /// The process's resident memory, from `/proc/self/status` (in kB there, whatever the page size).
    #[cfg(target_os = "linux")]
    fn rss_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Memory is resident as it is used, not a huge page at a time (`commit_on_demand`): each thread that allocates
    /// a little (a runtime worker, sled's, the parking thread) makes only that resident. With mimalloc's arena
    /// committed up front and marked for transparent huge pages, each thread's first allocation made 2 MiB
    /// resident, and so did every new region its heap touched.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_that_allocates_a_little_makes_only_that_resident() {
        const THREADS: usize = 16;
        let all_started = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
        let may_end = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
        let before = rss_bytes();
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (all_started, may_end) = (all_started.clone(), may_end.clone());
                std::thread::spawn(move || {
                    // A few small blocks, held while the main thread looks.
                    let blocks: Vec<Box<[u8; 256]>> = (0..64).map(|i| Box::new([i as u8; 256])).collect();
                    all_started.wait();
                    may_end.wait();
                    drop(blocks);
                })
            })
            .collect();
        all_started.wait();
        let grown = rss_bytes().saturating_sub(before);
        may_end.wait();
        for t in threads {
            t.join().unwrap();
        }
        // Each thread's stack and heap pages: well under a huge page (2 MiB) each.
        assert!(grown < THREADS * 512 * 1024, "{THREADS} threads holding 16 KiB each grew RSS by {grown} bytes");
    }
}
