//! The test harness: start the real `skein` binary on ephemeral loopback ports, read its log, stop it by PID; and
//! a raw MQTT client built on our codec for byte-level checks. Every wait is bounded and waits for an event.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use skein_codec::{
    ByteString, Bytes, BytesMut, Connect, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, Publish, QoS,
    Subscribe, SubscriptionOptions, decode,
};

pub const WAIT: Duration = Duration::from_secs(10);

/// The path of the built binary.
pub fn skein_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skein")
}

#[derive(Default)]
struct Log {
    text: Mutex<String>,
    changed: Condvar,
}

/// A running `skein serve` process.
pub struct Skein {
    child: Option<Child>,
    pub mqtt: SocketAddr,
    pub http: Option<SocketAddr>,
    pub data_dir: PathBuf,
    log: Arc<Log>,
    /// Keeps the temporary data directory alive when the harness made it.
    _tmp: Option<Arc<tempfile::TempDir>>,
}

impl Skein {
    /// Starts a broker with its own temporary data directory.
    pub fn start(args: &[&str]) -> Skein {
        let tmp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut s = Skein::start_in(tmp.path(), args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a broker with its own temporary data directory that may have at most `files` descriptors open.
    pub fn start_with_file_limit(files: u32, args: &[&str]) -> Skein {
        let tmp = Arc::new(tempfile::tempdir().expect("temp dir"));
        // prlimit runs the broker in its own place: the process is the broker's.
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={files}")).arg("--").arg(skein_bin());
        let mut s = Skein::start_command(cmd, tmp.path(), args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a broker on `data_dir` (kept by the caller, so a restart finds the same state).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Skein {
        Skein::start_command(Command::new(skein_bin()), data_dir, args)
    }

    /// `cmd` runs the broker binary; this adds `serve` and its arguments.
    fn start_command(mut cmd: Command, data_dir: &Path, args: &[&str]) -> Skein {
        cmd.arg("serve").arg("--mqtt").arg("127.0.0.1:0").arg("--data-dir").arg(data_dir);
        // A listener given makes anonymous clients refused by default (as with Mosquitto 2.0); most tests want them.
        if !args.iter().any(|a| ["--allow-anonymous", "--password-file", "--config", "-c"].contains(a)) {
            cmd.args(["--allow-anonymous", "true"]);
        }
        cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("skein starts");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                sink.changed.notify_all();
            }
        });
        let mut s = Skein {
            child: Some(child),
            mqtt: "0.0.0.0:0".parse().unwrap(),
            http: None,
            data_dir: data_dir.into(),
            log,
            _tmp: None,
        };
        // The plain TCP listener's line ("listening for MQTT over TLS" is another).
        let line = s.wait_log("listening for MQTT local=");
        s.mqtt = addr_in(&line).expect("listen address in the log");
        if args.contains(&"--http") {
            s.http = Some(addr_in(&s.wait_log("listening for HTTP")).expect("http address"));
        }
        s
    }

    /// Waits for a log line containing `needle` and returns it; panics with the whole log after `WAIT`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut text = self.log.text.lock().unwrap();
        loop {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            let now = Instant::now();
            assert!(now < deadline, "no log line with {needle:?} within {WAIT:?}; log:\n{text}");
            text = self.log.changed.wait_timeout(text, deadline - now).unwrap().0;
        }
    }

    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn port(&self) -> u16 {
        self.mqtt.port()
    }

    /// SIGTERM, then waits for the process to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("skein did not stop within {WAIT:?} of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True until the process has exited.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, without waiting for the process to end (`stop` waits).
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
    }

    /// SIGSTOP: the process stays, answering nothing, until the returned guard is dropped (SIGCONT).
    pub fn pause(&self) -> Paused {
        let pid = self.pid();
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
        let paused = Paused(pid);
        // The signal is delivered asynchronously: until every thread shows as stopped, the node may still take
        // what is sent to it.
        let deadline = Instant::now() + WAIT;
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "skein {pid} did not stop within {WAIT:?} of SIGSTOP");
            std::thread::sleep(Duration::from_millis(1));
        }
        paused
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True when every thread of `pid` is in the stopped state ('T' in `/proc/PID/task/TID/stat`, the field after the
/// parenthesised command name).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
            .unwrap_or(false)
    })
}

/// A paused process (see `Skein::pause`), resumed when dropped, however the test ends.
pub struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

impl Drop for Skein {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn addr_in(line: &str) -> Option<SocketAddr> {
    line.split(|c: char| c.is_whitespace() || c == '"')
        .filter_map(|w| w.strip_prefix("local=").or(Some(w)))
        .find_map(|w| w.parse().ok())
}

/// A child process (a client) that is killed when dropped.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))))
    }

    /// Starts `cmd` with `input` as its whole standard input (closed after it).
    pub fn spawn_with_stdin(cmd: &mut Command, input: &[u8]) -> Proc {
        let mut p = Proc::spawn(cmd.stdin(Stdio::piped()));
        let mut stdin = p.0.as_mut().and_then(|c| c.stdin.take()).expect("stdin piped");
        stdin.write_all(input).expect("write the child's input");
        p
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// The child's piped standard output, to read as it runs.
    pub fn stdout(&mut self) -> std::process::ChildStdout {
        self.0.as_mut().and_then(|c| c.stdout.take()).expect("stdout piped and not taken yet")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit within `limit` and returns its output.
    pub fn wait_output(mut self, limit: Duration) -> std::process::Output {
        let mut child = self.0.take().expect("running");
        let deadline = Instant::now() + limit;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "process did not finish within {limit:?}; stdout: {} stderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking MQTT client on our own codec: sends exactly the packets a test writes, reads exactly what comes.
pub struct Raw {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    buf: BytesMut,
}

impl Raw {
    pub fn connect_tcp(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connects");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, version: ProtocolVersion::V311, buf: BytesMut::new() }
    }

    /// Connects and completes CONNECT/CONNACK; returns the CONNACK.
    pub fn connect(addr: SocketAddr, connect: Connect) -> (Raw, skein_codec::ConnAck) {
        let mut raw = Raw::connect_tcp(addr);
        raw.version = connect.protocol;
        raw.send(&Packet::Connect(Box::new(connect)));
        match raw.recv() {
            Some(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encodes");
        self.stream.write_all(&out).expect("writes");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("writes");
    }

    /// The next packet, or `None` when the server closed the connection. Panics after `WAIT` without either.
    pub fn recv(&mut self) -> Option<Packet> {
        loop {
            match decode(&mut self.buf, self.version, MAX_PACKET_SIZE) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("server sent a malformed packet: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("no packet and no close within {WAIT:?}: {e}"),
            }
        }
    }

    /// Reads until the server closes, returning what it sent before.
    pub fn recv_until_closed(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(p) = self.recv() {
            out.push(p);
        }
        out
    }
}

/// A CONNECT with the usual defaults.
pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

/// Runs `mosquitto_pub` against `broker` with extra arguments and waits for it.
pub fn mosquitto_pub(broker: &Skein, args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .output()
        .expect("mosquitto_pub runs (is mosquitto-clients installed?)");
    assert!(out.status.success(), "mosquitto_pub {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `mosquitto_sub` with `-d` and waits until it has its SUBACK, so what is published next reaches it.
pub fn mosquitto_sub(broker: &Skein, args: &[&str]) -> (Proc, Arc<Log2>) {
    let (p, log) = mosquitto_sub_started(broker, args);
    log.wait_for(|l| l.contains("received SUBACK"));
    (p, log)
}

/// Starts `mosquitto_sub` with `-d` without waiting for anything (a resumed session may get its queued messages,
/// and exit, before its SUBACK).
pub fn mosquitto_sub_started(broker: &Skein, args: &[&str]) -> (Proc, Arc<Log2>) {
    mosquitto_sub_on(&broker.port().to_string(), args)
}

/// `mosquitto_sub -d` against any port of 127.0.0.1 (a TLS one, say), started, not waited for.
pub fn mosquitto_sub_on(port: &str, args: &[&str]) -> (Proc, Arc<Log2>) {
    // Piped stdout is block-buffered by stdio; line buffering lets us see each line as it is printed.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-d"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut p = Proc::spawn(&mut cmd);
    let stdout = p.0.as_mut().unwrap().stdout.take().unwrap();
    let log = Arc::new(Log2::default());
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.push(line);
        }
        sink.close();
    });
    (p, log)
}

/// Lines of a client's output, waited on.
#[derive(Default)]
pub struct Log2 {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    /// The output has ended (the process closed it): every line is in `lines`.
    closed: std::sync::atomic::AtomicBool,
}

impl Log2 {
    pub fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }

    /// The output has ended.
    pub fn close(&self) {
        let _lines = self.lines.lock().unwrap();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// The message lines once the output has ended (after the process exited, its reader thread may still be
    /// behind by a line or two).
    pub fn final_messages(&self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.lines.lock().unwrap();
        while !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            let now = Instant::now();
            assert!(now < deadline, "the output never ended; got {:?}", *lines);
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
        drop(lines);
        self.messages()
    }

    pub fn wait_for(&self, pred: impl Fn(&str) -> bool) -> String {
        match self.wait_for_within(pred, WAIT) {
            Some(l) => l,
            None => panic!("expected output line not seen; got {:?}", *self.lines.lock().unwrap()),
        }
    }

    /// The first line `pred` accepts, once there is one; `None` if none comes within `limit`.
    pub fn wait_for_within(&self, pred: impl Fn(&str) -> bool, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits until `n` message lines have been read (the reader thread may still be behind an exited process).
    pub fn wait_messages(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            let lines = self.lines.lock().unwrap();
            assert!(Instant::now() < deadline, "expected {n} messages; got {:?}", *lines);
            drop(self.changed.wait_timeout(lines, Duration::from_millis(50)).unwrap());
        }
    }

    /// Output lines that are not mosquitto_sub's own `-d` debug lines.
    pub fn messages(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"))
            .cloned()
            .collect()
    }
}

/// A port nobody listens on right now, for addresses that must be known before a process starts. Taken below the
/// kernel's ephemeral range (32768 and up), where outgoing connections of the nodes themselves could take it first.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() * 7919;
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n * 613) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// GET `path` on an HTTP address; (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// Waits until `GET /readyz` answers 200.
pub fn wait_ready(http: SocketAddr) {
    let deadline = Instant::now() + WAIT * 3;
    while http_get(http, "/readyz").map(|(c, _)| c) != Some(200) {
        assert!(Instant::now() < deadline, "{http} never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster of real `skein` processes on loopback.
pub struct Nodes {
    pub nodes: Vec<Skein>,
    pub cluster_addrs: Vec<String>,
    pub dirs: Vec<tempfile::TempDir>,
    extra: Vec<String>,
    /// A second MQTT port of each node that it keeps across restarts (`start_on_fixed_ports`), as a pod keeps its
    /// port: for a load balancer in front.
    pub mqtt_ports: Vec<u16>,
}

impl Nodes {
    /// Starts `n` seed nodes with ids 1..=n and the same join list, and waits until all are ready.
    pub fn start(n: usize) -> Nodes {
        Nodes::start_with(n, &[])
    }

    /// The same, with extra flags for every node.
    pub fn start_with(n: usize, extra: &[&str]) -> Nodes {
        Nodes::start_ports(n, extra, Vec::new())
    }

    /// `start`, each node also listening on an MQTT port (`mqtt_ports`) that it keeps when `spawn` starts it again
    /// (a load balancer in front needs them to stay).
    pub fn start_on_fixed_ports(n: usize) -> Nodes {
        Nodes::start_ports(n, &[], (0..n).map(|_| free_port()).collect())
    }

    fn start_ports(n: usize, extra: &[&str], mqtt_ports: Vec<u16>) -> Nodes {
        let cluster_addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut nodes = Nodes { nodes: Vec::new(), cluster_addrs, dirs, extra, mqtt_ports };
        for i in 0..n {
            let s = nodes.spawn(i, &nodes.cluster_addrs.join(","));
            nodes.nodes.push(s);
        }
        for s in &nodes.nodes {
            wait_ready(s.http.unwrap());
        }
        nodes
    }

    /// Starts one more node (the next id) that joins through member `via` alone, and waits until it is ready.
    pub fn add_node(&mut self, via: usize) {
        self.cluster_addrs.push(format!("127.0.0.1:{}", free_port()));
        self.dirs.push(tempfile::tempdir().unwrap());
        let node = self.spawn(self.nodes.len(), &self.cluster_addrs[via].clone());
        wait_ready(node.http.unwrap());
        self.nodes.push(node);
    }

    /// Starts node `i` (id i+1) on its data dir with `join`.
    pub fn spawn(&self, i: usize, join: &str) -> Skein {
        let id = (i + 1).to_string();
        let mqtt = self.mqtt_ports.get(i).map(|p| format!("127.0.0.1:{p}"));
        let mut args =
            vec!["--node-id", &id, "--cluster", &self.cluster_addrs[i], "--join", join, "--http", "127.0.0.1:0"];
        if let Some(mqtt) = &mqtt {
            args.extend(["--mqtt", mqtt]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        Skein::start_in(self.dirs[i].path(), &args)
    }

    pub fn status(&self, i: usize) -> serde_json::Value {
        let (_, body) = http_get(self.nodes[i].http.unwrap(), "/cluster").expect("status");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Waits until node `i` sees `count` route entries for node id `node`.
    pub fn wait_node_routes(&self, i: usize, node: u64, count: u64) {
        let deadline = Instant::now() + WAIT;
        // A node that is no member and holds no route is not listed: it has none.
        while self.status(i)["routes_per_node"][node.to_string()].as_u64().unwrap_or(0) != count {
            assert!(Instant::now() < deadline, "node {i} never saw {count} routes of node {node}: {}", self.status(i));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Which node the client registry, as node `i` has it, gives `client_id`'s persistent session to: (node,
    /// epoch), `None` when it has no entry.
    pub fn session_owner(&self, i: usize, client_id: &str) -> Option<(u64, u64)> {
        let (code, body) = http_get(self.nodes[i].http.unwrap(), &format!("/cluster/clients/{client_id}"))?;
        if code == 404 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        Some((v["node"].as_u64().expect("node"), v["epoch"].as_u64().expect("epoch")))
    }

    /// Waits until every node's registry agrees that `client_id`'s session is on `node` (`None`: nowhere), and
    /// returns the entry's epoch.
    pub fn wait_session_owner(&self, client_id: &str, node: Option<u64>) -> Option<u64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen: Vec<_> = (0..self.nodes.len()).map(|i| self.session_owner(i, client_id)).collect();
            if seen.iter().all(|s| s.map(|(n, _)| n) == node) && seen.windows(2).all(|w| w[0] == w[1]) {
                return seen[0].map(|(_, e)| e);
            }
            assert!(Instant::now() < deadline, "{client_id}: wanted its session on {node:?}, the nodes say {seen:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `i` has a route entry for `count` filters.
    pub fn wait_routes(&self, i: usize, count: u64) {
        let deadline = Instant::now() + WAIT;
        while self.status(i)["routes"].as_u64() != Some(count) {
            assert!(Instant::now() < deadline, "node {i} never saw {count} routes: {}", self.status(i));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// HAProxy in front of `backends`, round-robin, plain TCP.
pub fn haproxy(backends: &[SocketAddr]) -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = format!(
        "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
         frontend mqtt\n  bind 127.0.0.1:{port}\n  default_backend nodes\nbackend nodes\n  balance roundrobin\n  \
         option redispatch\n  retries 3\n"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("  server n{i} {b} check inter 200ms fall 1 rise 1\n"));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let p = Proc::spawn(
        Command::new("haproxy").arg("-db").arg("-f").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not open {addr} (is haproxy installed?)");
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, addr, dir)
}

/// A cluster CA and certificates it signed, written as PEM files into a temporary directory: made by the test,
/// never committed.
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    /// A CA named `ca_name` and one certificate for 127.0.0.1 / localhost signed by it.
    pub fn new(ca_name: &str) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "skein node");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("node.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("node.key"), key.serialize_pem()).unwrap();
        // A client certificate whose Common Name is a user name.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "dave");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("client.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), key.serialize_pem()).unwrap();
        TestPki { dir }
    }

    /// The path of one of its files: ca.pem, node.pem, node.key, client.pem (CN dave), client.key.
    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_string_lossy().into_owned()
    }

    /// The three flags that turn on peer TLS with these files.
    pub fn flags(&self) -> Vec<String> {
        let p = |f: &str| self.dir.path().join(f).to_string_lossy().into_owned();
        vec![
            "--cluster-tls-cert".into(),
            p("node.pem"),
            "--cluster-tls-key".into(),
            p("node.key"),
            "--cluster-tls-ca".into(),
            p("ca.pem"),
        ]
    }
}

/// A SUBSCRIBE with these filters.
pub fn sub_packet(id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: id,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|(f, q)| (ByteString::from(*f), SubscriptionOptions { qos: *q, ..Default::default() }))
            .collect(),
    })
}

/// A PUBLISH of a static payload, not retained.
pub fn publish(topic: &str, qos: QoS, id: u16, payload: &'static [u8]) -> Packet {
    publish_owned(topic, qos, id, Bytes::from_static(payload))
}

/// A PUBLISH of any payload (one made per message, say), not retained.
pub fn publish_owned(topic: &str, qos: QoS, id: u16, payload: impl Into<Bytes>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        properties: Properties::default(),
        payload: payload.into(),
    })
}

/// A raw client connected as `client_id` and subscribed to `filters` (its SUBACK read).
pub fn raw_subscriber(addr: SocketAddr, version: ProtocolVersion, client_id: &str, filters: &[(&str, QoS)]) -> Raw {
    let (mut raw, _) = Raw::connect(addr, connect_packet(version, client_id, true));
    raw.send(&sub_packet(1, filters));
    assert!(matches!(raw.recv(), Some(Packet::SubAck(_))), "SUBACK for {client_id}");
    raw
}

/// Publishes `marker` (QoS 0) on `raw`'s connection, which is subscribed to it, and returns every PUBLISH the
/// broker sent before it comes back (acknowledging the QoS 1 ones): what was queued, or retained, before the marker.
pub fn until_marker(raw: &mut Raw, marker: &str) -> Vec<Publish> {
    raw.send(&publish(marker, QoS::AtMostOnce, 0, b"end"));
    let mut got = Vec::new();
    loop {
        let p = expect_publish(raw);
        if p.topic == marker {
            return got;
        }
        if p.qos == QoS::AtLeastOnce {
            raw.send(&Packet::PubAck(skein_codec::Ack::new(p.packet_id)));
        }
        got.push(p);
    }
}

/// The next packet, which must be a PUBLISH.
pub fn expect_publish(raw: &mut Raw) -> Publish {
    match raw.recv() {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}
