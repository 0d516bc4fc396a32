//! The HTTP endpoint for probes, metrics and status: `GET /healthz` (the process answers), `GET /readyz` (the MQTT
//! listeners are up, the node is not shutting down, and, when clustered, it has joined and knows a leader),
//! `GET /metrics` (Prometheus' text format, see `metrics.rs`), `GET /cluster` (the cluster as this node sees it, JSON), `GET /cluster/clients/{id}` (which node holds that
//! client's persistent session, JSON; the id percent-encoded), `POST /cluster/leave` (leave the cluster, then
//! shut down) and `POST /cluster/remove/{id}` (remove another member, one gone for good), both taken only from the
//! node's own machine (loopback): the port is open to whatever scrapes `/metrics`, which must not be able to take a
//! cluster apart. Deliberately tiny: one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skein_broker::Broker;
use skein_cluster::node::ClusterNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(listener: TcpListener, broker: Arc<Broker>, node: Option<Arc<ClusterNode>>) {
    let mut shutdown = broker.shutdown_signal();
    loop {
        let (stream, peer) = tokio::select! {
            a = skein_broker::listener::accept(&listener, "HTTP") => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (broker, node) = (broker.clone(), node.clone());
        tokio::spawn(async move {
            let answered = answer(stream, peer, &broker, node.as_deref());
            let _ = tokio::time::timeout(Duration::from_secs(5), answered).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    broker: &Broker,
    node: Option<&ClusterNode>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body): (&str, &str, String) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", "/readyz") => match unready(broker, node) {
            Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
            None => ("200 OK", "text/plain", "ready\n".into()),
        },
        ("GET", "/metrics") => match crate::metrics::render(broker, node, unready(broker, node).is_none()) {
            Ok(text) => ("200 OK", crate::metrics::CONTENT_TYPE, text),
            Err(e) => ("500 Internal Server Error", "text/plain", format!("metrics could not be gathered: {e}\n")),
        },
        ("GET", "/cluster") => match node {
            Some(n) => ("200 OK", "application/json", format!("{}\n", n.status())),
            None => ("404 Not Found", "text/plain", "not clustered: start with --cluster ADDR\n".into()),
        },
        ("GET", p) if p.starts_with("/cluster/clients/") => match node {
            Some(n) => match percent_decode(&p["/cluster/clients/".len()..]) {
                Some(id) => match n.client(&id) {
                    Some(c) => (
                        "200 OK",
                        "application/json",
                        format!(
                            "{}\n",
                            serde_json::json!({"client_id": id, "node": c.node, "since_ns": c.since, "epoch": c.epoch})
                        ),
                    ),
                    None => ("404 Not Found", "text/plain", "no persistent session of that client id\n".into()),
                },
                None => ("400 Bad Request", "text/plain", "the client id is not valid percent-encoded UTF-8\n".into()),
            },
            None => ("404 Not Found", "text/plain", "not clustered\n".into()),
        },
        ("POST", _) if !changes_allowed_from(peer) => (
            "403 Forbidden",
            "text/plain",
            "cluster changes are taken only from this node's own machine: run `skein cluster leave` or `skein \
             cluster remove ID` there (in Kubernetes: kubectl exec POD -- skein cluster ...)\n"
                .into(),
        ),
        ("POST", "/cluster/leave") => match node {
            Some(n) => match n.leave().await {
                Ok(()) => {
                    tracing::info!("left the cluster; shutting down");
                    broker.begin_shutdown();
                    ("200 OK", "text/plain", "left the cluster; shutting down\n".into())
                }
                Err(e) => ("503 Service Unavailable", "text/plain", format!("could not leave: {e}\n")),
            },
            None => ("404 Not Found", "text/plain", "not clustered\n".into()),
        },
        ("POST", p) if p.starts_with("/cluster/remove/") => match node {
            Some(n) => match p["/cluster/remove/".len()..].parse::<u64>() {
                Ok(id) => match n.remove(id).await {
                    Ok(()) => {
                        tracing::info!(node_id = id, "removed from the cluster");
                        ("200 OK", "text/plain", format!("node {id} removed from the cluster\n"))
                    }
                    Err(e) => ("409 Conflict", "text/plain", format!("could not remove node {id}: {e}\n")),
                },
                Err(_) => ("400 Bad Request", "text/plain", "write the node id as a number\n".into()),
            },
            None => ("404 Not Found", "text/plain", "not clustered\n".into()),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET, or POST /cluster/leave or /cluster/remove/ID\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Whether a request to change the cluster (leave, remove) may come from `peer`: only over loopback.
fn changes_allowed_from(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Why `/readyz` says not ready, or `None` when ready.
fn unready(broker: &Broker, node: Option<&ClusterNode>) -> Option<&'static str> {
    if broker.is_shutting_down() {
        Some("shutting down")
    } else if node.is_some_and(|n| !n.ready()) {
        Some("not joined to a cluster with a leader yet")
    } else {
        None
    }
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(super::percent_decode("%E2%9C%93").as_deref(), Some("\u{2713}"));
        assert_eq!(super::percent_decode("%2"), None);
        assert_eq!(super::percent_decode("%zz"), None);
        assert_eq!(super::percent_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn cluster_changes_only_over_loopback() {
        for ok in ["127.0.0.1:5000", "127.1.2.3:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert!(super::changes_allowed_from(ok.parse().unwrap()), "{ok}");
        }
        for refused in ["10.0.0.7:5000", "192.168.1.2:5000", "[fd00::1]:5000", "[::ffff:10.0.0.7]:5000"] {
            assert!(!super::changes_allowed_from(refused.parse().unwrap()), "{refused}");
        }
    }
}
