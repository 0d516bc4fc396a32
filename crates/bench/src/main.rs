//! `skein-bench`: an MQTT load generator for any broker. Runs one scenario (p2p, fan-out, fan-in, shared, conn),
//! shows a progress line every second, and ends with a table and, with `--json`, a JSON report.

mod procstat;
mod track;
mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use clap::{Args, Parser, Subcommand};
use skein_codec::{Ack, MAX_PACKET_SIZE, Packet, ProtocolVersion, QoS, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::track::{Counts, Tracker};
use crate::wire::{Client, Target};

#[derive(Parser)]
#[command(name = "skein-bench", version, about = "MQTT load generator: any broker, standard scenarios")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Connect subscribers to this port instead (another node of a cluster: publishers on one, subscribers on
    /// another).
    #[arg(long)]
    sub_port: Option<u16>,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// MQTT over TLS (the broker's TLS port), checking its certificate against --cafile.
    #[arg(long, requires = "cafile")]
    tls: bool,
    /// PEM file of the CA that signed the broker's certificate.
    #[arg(long, value_name = "PEM")]
    cafile: Option<PathBuf>,
    /// Name the broker's certificate must carry [default: --host].
    #[arg(long, value_name = "NAME")]
    tls_name: Option<String>,
    /// Connect with persistent sessions instead of clean ones (what a broker's persistence then has to store).
    #[arg(long)]
    persistent: bool,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1", value_parser = ["3.1.1", "5"])]
    protocol: String,
    /// The broker's PID, to report its CPU seconds and peak memory (read from /proc); repeat for every node of a
    /// cluster, whose figures are then summed.
    #[arg(long)]
    broker_pid: Vec<u32>,
    /// Seconds between the last SUBACK and the first publish (a cluster needs a moment to spread new routes).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Name of the broker in the report.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Worker threads of the generator (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// N publishers, each to its own topic, N subscribers, one per topic.
    P2p(Load),
    /// One publisher, N subscribers on its topic.
    Fanout(Load),
    /// N publishers on N topics, one wildcard subscriber.
    Fanin(Load),
    /// N publishers, `--members` subscribers sharing `$share/bench/bench/shared/#`.
    Shared {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 10)]
        members: usize,
    },
    /// Open `--connections` idle connections at `--rate` per second and hold them.
    Conn(ConnArgs),
}

#[derive(Args, Clone, Debug, serde::Serialize)]
struct Load {
    /// Pairs (p2p), subscribers (fanout) or publishers (fanin, shared).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload bytes (at least 20: the tracking header).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages per second per publisher; 0 = as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Messages a publisher may be ahead of their delivery (and, at QoS 1/2, ahead of their acknowledgement).
    /// Unbounded runs are closed-loop: as fast as the broker delivers, never faster than it can.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// QoS 1/2 messages a publisher may have unacknowledged; also capped by the broker's Receive Maximum (MQTT 5.0).
    /// 20 is Mosquitto's max_inflight_messages, past which it closes a publisher with unreleased QoS 2 messages.
    #[arg(long, default_value_t = 20)]
    inflight: usize,
    /// Seconds to wait, after publishing stops, for the last messages to arrive.
    #[arg(long, default_value_t = 3)]
    drain: u64,
}

#[derive(Args, Clone, Debug, serde::Serialize)]
struct ConnArgs {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// New connections per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to hold them, idle, once all are up.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Spread connections over this many source addresses 127.0.0.1, 127.0.0.2, ... (about 28k ports each).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Each connection then subscribes to this many filters of its own, one SUBSCRIBE at a time (in a cluster,
    /// each is a new route).
    #[arg(long, default_value_t = 0)]
    subscribe: usize,
}

/// The figures of one run.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    label: String,
    scenario: String,
    settings: serde_json::Value,
    seconds: f64,
    published: u64,
    expected: u64,
    delivered: Counts,
    lost: u64,
    published_per_s: f64,
    delivered_per_s: f64,
    latency_us: Latency,
    broker_cpu_s: Option<f64>,
    delivered_per_broker_cpu_s: Option<f64>,
    broker_peak_rss_bytes: Option<u64>,
    connections: Option<usize>,
    connects_per_s: Option<f64>,
    /// With `conn --subscribe`: SUBACKs received per second over the run.
    subscribes_per_s: Option<f64>,
    rss_per_connection_bytes: Option<f64>,
    errors: u64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

/// Counters every task adds to, read by the progress line.
#[derive(Default)]
struct Live {
    /// Deliveries of each publisher's messages, over all subscribers: the closed loop's feedback.
    per_publisher: Vec<AtomicU64>,
    /// Wakes a publisher waiting for its deliveries to catch up with its window (a timer would cap a small window's
    /// rate at a window per timer tick).
    caught_up: Vec<tokio::sync::Notify>,
    published: AtomicU64,
    delivered: AtomicU64,
    connected: AtomicU64,
    errors: AtomicU64,
    peak_rss: AtomicU64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skein-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skein-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let addr = (cli.host.as_str(), cli.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}:{}: {e}", cli.host, cli.port))?
        .next()
        .ok_or("no address")?;
    let version = if cli.protocol == "5" { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
    let tls = match (&cli.tls, &cli.cafile) {
        (true, Some(ca)) => Some(wire::Tls::new(ca, cli.tls_name.as_deref().unwrap_or(&cli.host))?),
        _ => None,
    };
    let target = Target {
        addr,
        version,
        username: cli.username.clone(),
        password: cli.password.clone(),
        tls,
        persistent: cli.persistent,
    };
    let sub_target = Target { addr: SocketAddr::new(addr.ip(), cli.sub_port.unwrap_or(cli.port)), ..target.clone() };
    let publishers = match &cli.scenario {
        Scenario::P2p(l) | Scenario::Fanin(l) | Scenario::Shared { load: l, .. } => l.clients,
        Scenario::Fanout(_) => 1,
        Scenario::Conn(_) => 0,
    };
    let live = Arc::new(Live {
        per_publisher: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
        caught_up: (0..publishers).map(|_| tokio::sync::Notify::new()).collect(),
        ..Live::default()
    });
    let mut report = match cli.scenario.clone() {
        Scenario::Conn(args) => conn(&target, &args, &cli.broker_pid, &live).await?,
        s => load(&target, &sub_target, s, &cli.broker_pid, cli.warmup, &live).await?,
    };
    report.label = cli.label.clone();
    report.errors = live.errors.load(Ordering::Relaxed);
    print_table(&report);
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn qos(n: u8) -> QoS {
    QoS::from_u8(n).unwrap_or(QoS::AtMostOnce)
}

/// The message flows of a scenario: (publisher topics, subscriber filters, how many deliveries one publish makes).
struct Plan {
    name: &'static str,
    load: Load,
    publishers: Vec<String>,
    subscribers: Vec<String>,
}

impl Plan {
    fn of(s: Scenario) -> Plan {
        match s {
            Scenario::P2p(load) => Plan {
                name: "p2p",
                publishers: (0..load.clients).map(|i| format!("bench/p2p/{i}")).collect(),
                subscribers: (0..load.clients).map(|i| format!("bench/p2p/{i}")).collect(),
                load,
            },
            Scenario::Fanout(load) => Plan {
                name: "fanout",
                publishers: vec!["bench/fanout".into()],
                subscribers: vec!["bench/fanout".into(); load.clients],
                load,
            },
            Scenario::Fanin(load) => Plan {
                name: "fanin",
                publishers: (0..load.clients).map(|i| format!("bench/fanin/{i}")).collect(),
                subscribers: vec!["bench/fanin/+".into()],
                load,
            },
            Scenario::Shared { load, members } => Plan {
                name: "shared",
                publishers: (0..load.clients).map(|i| format!("bench/shared/{i}")).collect(),
                subscribers: vec!["$share/bench/bench/shared/#".into(); members],
                load,
            },
            Scenario::Conn(_) => unreachable!("conn has its own runner"),
        }
    }

    /// Deliveries expected from `published` messages in total.
    fn expected(&self, published: u64) -> u64 {
        match self.name {
            "fanout" => published * self.subscribers.len() as u64,
            _ => published,
        }
    }
}

async fn load(
    target: &Target,
    sub_target: &Target,
    scenario: Scenario,
    pids: &[u32],
    warmup: f64,
    live: &Arc<Live>,
) -> Result<Report, String> {
    let plan = Plan::of(scenario);
    let l = plan.load.clone();
    let q = qos(l.qos);
    eprintln!(
        "{}: {} publishers, {} subscribers, QoS {}, {} B, rate {}",
        plan.name,
        plan.publishers.len(),
        plan.subscribers.len(),
        l.qos,
        l.payload,
        if l.rate == 0 { "unbounded".to_string() } else { format!("{}/s per publisher", l.rate) }
    );
    let epoch = Instant::now();
    let (stop_subs, stop_subs_rx) = watch::channel(false);
    let mut subs = Vec::new();
    for (i, filter) in plan.subscribers.iter().enumerate() {
        let mut c = Client::connect(sub_target, &format!("bench-sub-{i}"), None)
            .await
            .map_err(|e| format!("subscriber {i}: {e}"))?;
        c.subscribe(filter, q).await.map_err(|e| format!("subscriber {i}: {e}"))?;
        subs.push(tokio::spawn(subscriber(c, epoch, live.clone(), stop_subs_rx.clone())));
    }
    let mut clients = Vec::new();
    for i in 0..plan.publishers.len() {
        clients.push(
            Client::connect(target, &format!("bench-pub-{i}"), None)
                .await
                .map_err(|e| format!("publisher {i}: {e}"))?,
        );
    }
    if warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    }
    let cpu0 = cpu_of(pids);
    let stop_pubs = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut pubs = Vec::new();
    for (i, (c, topic)) in clients.into_iter().zip(plan.publishers.iter()).enumerate() {
        let fan = plan.expected(1);
        let cfg = PubConfig {
            id: i as u32,
            topic: topic.clone().into_bytes(),
            qos: q,
            payload: l.payload,
            rate: l.rate,
            window: l.window.max(1),
            inflight: l.inflight.min(usize::from(c.receive_maximum)).max(1),
            fan,
        };
        pubs.push(tokio::spawn(publisher(c, cfg, epoch, live.clone(), stop_pubs.clone())));
    }
    let progress = tokio::spawn(progress(live.clone(), pids.to_vec(), start));
    tokio::time::sleep(Duration::from_secs(l.duration)).await;
    stop_pubs.store(true, Ordering::Relaxed);
    let mut published = 0;
    for p in pubs {
        published += p.await.map_err(|e| e.to_string())?;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    // Drain: until every expected delivery is in, or the drain time is up.
    let expected = plan.expected(published);
    let drain_until = Instant::now() + Duration::from_secs(l.drain);
    while live.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = cpu_of(pids);
    let _ = stop_subs.send(true);
    progress.abort();
    let mut counts = Counts::default();
    let mut latency = Tracker::default().latency_us;
    for s in subs {
        let t = s.await.map_err(|e| e.to_string())?;
        Tracker::merge_counts(&mut counts, t.counts());
        latency.add(&t.latency_us).map_err(|e| e.to_string())?;
    }
    eprintln!();
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Report {
        scenario: plan.name.into(),
        settings: serde_json::to_value(&l).unwrap_or_default(),
        seconds: publish_secs,
        published,
        expected,
        lost: expected.saturating_sub(counts.unique),
        published_per_s: published as f64 / publish_secs,
        delivered_per_s: counts.unique as f64 / publish_secs,
        delivered: counts,
        latency_us: Latency {
            p50: latency.value_at_quantile(0.50),
            p90: latency.value_at_quantile(0.90),
            p99: latency.value_at_quantile(0.99),
            max: latency.max(),
        },
        broker_cpu_s: cpu,
        delivered_per_broker_cpu_s: cpu.filter(|c| *c > 0.0).map(|c| counts.unique as f64 / c),
        broker_peak_rss_bytes: Some(live.peak_rss.load(Ordering::Relaxed)).filter(|r| *r > 0),
        ..Report::default()
    })
}

struct PubConfig {
    /// Deliveries one message makes (subscribers on its topic).
    fan: u64,
    id: u32,
    topic: Vec<u8>,
    qos: QoS,
    payload: usize,
    rate: u64,
    window: usize,
    /// QoS 1/2 messages awaiting their acknowledgement, at most.
    inflight: usize,
}

/// Publishes until told to stop; returns how many messages it sent (for QoS 1/2: that were acknowledged).
async fn publisher(mut c: Client, cfg: PubConfig, epoch: Instant, live: Arc<Live>, stop: Arc<AtomicBool>) -> u64 {
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut seq = 0u64;
    let mut outstanding = 0usize;
    let mut completed = 0u64;
    let mut next_id: u16 = 1;
    let started = Instant::now();
    let batch = 64u64;
    let mut skipped = 0u64;
    let mut stall_since: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && outstanding == 0 {
            break;
        }
        // How many may go now: the window, and the rate's schedule.
        let due = if cfg.rate == 0 {
            batch
        } else {
            let should = (started.elapsed().as_secs_f64() * cfg.rate as f64) as u64;
            should.saturating_sub(seq).min(batch)
        };
        let in_flight = cfg.window.min(cfg.inflight);
        let acked_room = if cfg.qos == QoS::AtMostOnce { u64::MAX } else { (in_flight - outstanding) as u64 };
        // Closed loop: no more than `window` ahead of what subscribers have received. A message the broker dropped
        // never arrives, so after a stall the loop gives up waiting and sends on (the loss is counted at the end).
        let delivered = live.per_publisher.get(cfg.id as usize).map_or(0, |d| d.load(Ordering::Relaxed)) / cfg.fan;
        let ahead = seq.saturating_sub(delivered.max(skipped));
        if ahead >= cfg.window as u64 {
            if stall_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(200) {
                skipped = seq;
                stall_since = None;
            }
        } else {
            stall_since = None;
        }
        let delivery_room = (cfg.window as u64).saturating_sub(seq.saturating_sub(delivered.max(skipped)));
        let n = if stopping { 0 } else { due.min(acked_room).min(delivery_room) };
        // Nothing may go until deliveries catch up: woken by the subscribers (bounded, for the stall rule above).
        let window_bound = !stopping && delivery_room == 0;
        let caught_up = async {
            match live.caught_up.get(cfg.id as usize) {
                Some(n) if window_bound => {
                    let _ = tokio::time::timeout(Duration::from_millis(50), n.notified()).await;
                }
                _ => std::future::pending().await,
            }
        };
        for _ in 0..n {
            let id = next_id;
            if cfg.qos != QoS::AtMostOnce {
                next_id = next_id.checked_add(1).unwrap_or(1);
                outstanding += 1;
            }
            let now = epoch.elapsed().as_nanos() as u64;
            wire::put_publish(&mut wbuf, c.version, &cfg.topic, cfg.qos, id, cfg.payload, (cfg.id, seq, now));
            seq += 1;
        }
        if cfg.qos == QoS::AtMostOnce {
            completed += n;
        }
        live.published.fetch_add(n, Ordering::Relaxed);
        if !wbuf.is_empty() {
            if c.stream.write_all(&wbuf).await.is_err() || c.stream.flush().await.is_err() {
                live.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            wbuf.clear();
        }
        // Read acknowledgements when there are any to wait for or nothing else to do.
        let must_wait = cfg.qos != QoS::AtMostOnce && (outstanding >= in_flight || stopping);
        let idle = n == 0 && !must_wait;
        if cfg.qos == QoS::AtMostOnce {
            if idle && window_bound {
                caught_up.await;
            } else if idle {
                // Waiting for the rate's next slot.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            continue;
        }
        let read = if must_wait {
            match tokio::time::timeout(Duration::from_secs(5), c.stream.read_buf(&mut c.rbuf)).await {
                Ok(r) => r,
                Err(_) => {
                    // The broker stopped acknowledging: count what is missing as errors and stop.
                    live.errors.fetch_add(outstanding as u64, Ordering::Relaxed);
                    break;
                }
            }
        } else {
            tokio::select! {
                biased;
                r = c.stream.read_buf(&mut c.rbuf) => r,
                () = caught_up => Ok(usize::MAX),
                _ = tokio::time::sleep(Duration::from_millis(if window_bound { 50 } else { u64::from(idle) })) => {
                    Ok(usize::MAX)
                }
            }
        };
        match read {
            Ok(0) | Err(_) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            _ => {}
        }
        while let Ok(Some(p)) = decode(&mut c.rbuf, c.version, MAX_PACKET_SIZE) {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => {
                    outstanding = outstanding.saturating_sub(1);
                    completed += 1;
                }
                Packet::PubRec(a) => {
                    let _ = Packet::PubRel(Ack::new(a.packet_id)).encode(c.version, &mut wbuf);
                }
                _ => {}
            }
        }
    }
    completed
}

/// Receives until told to stop, acknowledging as its QoS requires; returns what it saw.
async fn subscriber(mut c: Client, epoch: Instant, live: Arc<Live>, mut stop: watch::Receiver<bool>) -> Tracker {
    let mut tracker = Tracker::default();
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    // Deliveries per publisher in this read, added to the shared counts once per read (not per message).
    let mut counted = vec![0u64; live.per_publisher.len()];
    let mut touched: Vec<usize> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = c.stream.read_buf(&mut c.rbuf) => match r {
                Ok(0) | Err(_) => {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(_) => {}
            },
        }
        let now = epoch.elapsed().as_nanos() as u64;
        let mut n = 0;
        loop {
            // PUBLISH, nearly all of what comes, is read in place; anything else goes through the codec.
            if let Some(v) = wire::view_publish(&c.rbuf, c.version) {
                if let Some((publisher, seq, sent)) = track::read_header(&c.rbuf[v.payload.0..v.payload.1]) {
                    tracker.record(publisher, seq, now.saturating_sub(sent));
                    if let Some(k) = counted.get_mut(publisher as usize) {
                        if *k == 0 {
                            touched.push(publisher as usize);
                        }
                        *k += 1;
                    }
                    n += 1;
                }
                match v.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        let _ = Packet::PubAck(Ack::new(v.packet_id)).encode(c.version, &mut wbuf);
                    }
                    QoS::ExactlyOnce => {
                        let _ = Packet::PubRec(Ack::new(v.packet_id)).encode(c.version, &mut wbuf);
                    }
                }
                c.rbuf.advance(v.len);
                continue;
            }
            match decode(&mut c.rbuf, c.version, MAX_PACKET_SIZE) {
                Ok(Some(Packet::PubRel(a))) => {
                    let _ = Packet::PubComp(Ack::new(a.packet_id)).encode(c.version, &mut wbuf);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    return tracker;
                }
            }
        }
        for p in touched.drain(..) {
            live.per_publisher[p].fetch_add(std::mem::take(&mut counted[p]), Ordering::Relaxed);
            live.caught_up[p].notify_one();
        }
        live.delivered.fetch_add(n, Ordering::Relaxed);
        if !wbuf.is_empty() {
            if c.stream.write_all(&wbuf).await.is_err() || c.stream.flush().await.is_err() {
                live.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            wbuf.clear();
        }
    }
    tracker
}

/// Prints a progress line every second and samples the broker's memory.
/// CPU seconds of all `pids` together; `None` without pids or when one cannot be read.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| procstat::cpu_seconds(*p)).sum()
}

/// Resident memory of all `pids` together.
fn rss_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| procstat::rss_bytes(*p)).sum()
}

async fn progress(live: Arc<Live>, pids: Vec<u32>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut last_p, mut last_d, mut last_t) = (0u64, 0u64, Instant::now());
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if let Some(rss) = rss_of(&pids) {
            live.peak_rss.fetch_max(rss, Ordering::Relaxed);
        }
        n += 1;
        if !n.is_multiple_of(4) {
            continue;
        }
        let (p, d, c) = (
            live.published.load(Ordering::Relaxed),
            live.delivered.load(Ordering::Relaxed),
            live.connected.load(Ordering::Relaxed),
        );
        let dt = last_t.elapsed().as_secs_f64();
        eprint!(
            "\r  {:>4.0} s  published {:>9.0}/s  delivered {:>9.0}/s  connections {c}  errors {}   ",
            start.elapsed().as_secs_f64(),
            (p - last_p) as f64 / dt,
            (d - last_d) as f64 / dt,
            live.errors.load(Ordering::Relaxed)
        );
        (last_p, last_d, last_t) = (p, d, Instant::now());
    }
}

async fn conn(target: &Target, args: &ConnArgs, pids: &[u32], live: &Arc<Live>) -> Result<Report, String> {
    eprintln!(
        "conn: {} connections at {} per second over {} source addresses",
        args.connections, args.rate, args.sources
    );
    let rss0 = rss_of(pids);
    let cpu0 = cpu_of(pids);
    let (stop, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let progress = tokio::spawn(progress(live.clone(), pids.to_vec(), start));
    let mut tasks = Vec::with_capacity(args.connections);
    let subscribe = args.subscribe;
    for i in 0..args.connections {
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(args.sources.max(1))) as u8);
        let (target, live, mut stop_rx) = (target.clone(), live.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let opened = async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
                let stream = socket.connect(target.addr).await?;
                let mut c = Client::connect(&target, &format!("bench-conn-{i}"), Some(stream)).await?;
                for k in 0..subscribe {
                    c.subscribe(&format!("bench/conn/{i}/{k}"), QoS::AtMostOnce).await?;
                }
                Ok::<_, std::io::Error>(c)
            };
            match tokio::time::timeout(Duration::from_secs(30), opened).await {
                Ok(Ok(c)) => {
                    live.connected.fetch_add(1, Ordering::Relaxed);
                    let _ = stop_rx.wait_for(|s| *s).await;
                    drop(c);
                }
                _ => {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Until every connection is up (or failed).
    while (live.connected.load(Ordering::Relaxed) + live.errors.load(Ordering::Relaxed)) < args.connections as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let up = start.elapsed().as_secs_f64();
    let connected = live.connected.load(Ordering::Relaxed) as usize;
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let rss1 = rss_of(pids);
    let cpu1 = cpu_of(pids);
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    eprintln!();
    Ok(Report {
        scenario: "conn".into(),
        settings: serde_json::to_value(args).unwrap_or_default(),
        seconds: up,
        connections: Some(connected),
        connects_per_s: Some(connected as f64 / up),
        subscribes_per_s: (args.subscribe > 0).then(|| (connected * args.subscribe) as f64 / up),
        rss_per_connection_bytes: match (rss0, rss1) {
            (Some(a), Some(b)) if connected > 0 => Some(b.saturating_sub(a) as f64 / connected as f64),
            _ => None,
        },
        broker_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
        broker_peak_rss_bytes: Some(live.peak_rss.load(Ordering::Relaxed)).filter(|r| *r > 0),
        ..Report::default()
    })
}

fn print_table(r: &Report) {
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
    println!("{:<28} {}", "broker", r.label);
    println!("{:<28} {}", "scenario", r.scenario);
    println!("{:<28} {}", "settings", r.settings);
    if r.scenario == "conn" {
        println!("{:<28} {}", "connections", r.connections.unwrap_or(0));
        println!("{:<28} {}", "connects/s", opt(r.connects_per_s, ""));
        if r.subscribes_per_s.is_some() {
            println!("{:<28} {}", "subscribes/s", opt(r.subscribes_per_s, ""));
        }
        println!("{:<28} {}", "broker RSS per connection", opt(r.rss_per_connection_bytes, " B"));
    } else {
        println!("{:<28} {:.2}", "seconds", r.seconds);
        println!("{:<28} {}", "published", r.published);
        println!("{:<28} {}", "expected deliveries", r.expected);
        println!("{:<28} {}", "delivered (unique)", r.delivered.unique);
        println!(
            "{:<28} {} lost, {} duplicate, {} out of order",
            "loss", r.lost, r.delivered.duplicates, r.delivered.out_of_order
        );
        println!("{:<28} {:.0}", "published/s", r.published_per_s);
        println!("{:<28} {:.0}", "delivered/s", r.delivered_per_s);
        println!(
            "{:<28} p50 {} p90 {} p99 {} max {}",
            "latency (µs)", r.latency_us.p50, r.latency_us.p90, r.latency_us.p99, r.latency_us.max
        );
        println!("{:<28} {}", "delivered per broker CPU-s", opt(r.delivered_per_broker_cpu_s, ""));
    }
    println!("{:<28} {}", "broker CPU seconds", opt(r.broker_cpu_s, " s"));
    println!(
        "{:<28} {}",
        "broker peak RSS",
        r.broker_peak_rss_bytes.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
    );
    println!("{:<28} {}", "errors", r.errors);
}
