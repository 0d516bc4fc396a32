//! Accept loops. Every listener hands its streams to the same connection driver.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;
use crate::connection;
use crate::stats::Stats;
use crate::tls::{Reloading, common_name};

/// Connections a listener serves at a time (Mosquitto's per-listener `max_connections`); 0: no limit of its own.
/// `Broker`'s `max_connections` still bounds all listeners together.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_connections: usize,
}

/// Counts one connection of a listener until dropped (parked or not).
pub(crate) struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts on `listener` until the broker shuts down, at most `max_connection_rate` a second, and runs `serve` for
/// each stream in a task of its own (so no handshake holds up the next client). A stream over the listener's own
/// limit is closed at once, before any handshake, as Mosquitto does.
async fn accept_loop<F, Fut>(broker: Arc<Broker>, listener: TcpListener, limits: Limits, serve: F)
where
    F: Fn(Arc<Broker>, TcpStream, SocketAddr, Held) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(AtomicUsize::new(0));
    let mut shutdown = broker.shutdown_signal();
    loop {
        let (stream, peer) = tokio::select! {
            a = accept(&listener, "MQTT") => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if limits.max_connections != 0 && open.load(Ordering::Acquire) >= limits.max_connections {
            Stats::add(&broker.stats.connections_refused, 1);
            tracing::debug!(%peer, limit = limits.max_connections, "listener full: connection closed");
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let held = Held(open.clone());
        broker.admit().await;
        // Latency over packet count: MQTT packets are small and each one is awaited by someone.
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(broker.clone(), stream, peer, held));
    }
}

/// The next connection `listener` accepts. A failed accept (out of file descriptors and the like) is logged, with
/// `what` listens, and tried again 50 ms later: tried at once, it fails again at once and spins a core for as long
/// as it lasts. Cancel-safe, as `TcpListener::accept` is. Every listening port of the node accepts through this.
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts MQTT over TCP on `listener` until the broker shuts down.
pub async fn serve_tcp(broker: Arc<Broker>, listener: TcpListener, limits: Limits) {
    accept_loop(broker, listener, limits, |broker, stream, peer, held| {
        let (r, w) = stream.into_split();
        connection::serve_held(broker, r, w, peer, None, Some(held))
    })
    .await
}

/// Accepts MQTT over TLS on `listener` until the broker shuts down. The handshake is bounded by the CONNECT timeout.
/// With `identity_as_username`, the client certificate's Common Name is the user name (and a client without one is
/// refused, as the listener then requires a certificate).
pub async fn serve_tls(
    broker: Arc<Broker>,
    listener: TcpListener,
    limits: Limits,
    tls: Arc<Reloading>,
    identity_as_username: bool,
) {
    accept_loop(broker, listener, limits, move |broker, stream, peer, held| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        async move {
            let _held = held;
            let Some(stream) = tls_handshake(&broker, acceptor, stream, peer).await else { return };
            let identity = if identity_as_username {
                let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
                let name = certificate.and_then(|c| common_name(c));
                if name.is_none() {
                    tracing::info!(%peer, "client certificate without a Common Name refused");
                    return;
                }
                name
            } else {
                None
            };
            let (r, w) = tokio::io::split(stream);
            connection::serve(broker, r, w, peer, identity).await;
        }
    })
    .await
}

/// Accepts MQTT over WebSocket on `listener` until the broker shuts down: `ws://`, or `wss://` with `tls`. The TLS
/// and WebSocket handshakes are each bounded by the CONNECT timeout.
pub async fn serve_ws(broker: Arc<Broker>, listener: TcpListener, limits: Limits, tls: Option<Arc<Reloading>>) {
    accept_loop(broker, listener, limits, move |broker, stream, peer, held| {
        let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.current()));
        async move {
            let _held = held;
            match acceptor {
                None => serve_websocket(broker, stream, peer).await,
                Some(acceptor) => {
                    if let Some(s) = tls_handshake(&broker, acceptor, stream, peer).await {
                        serve_websocket(broker, s, peer).await
                    }
                }
            }
        }
    })
    .await
}

async fn tls_handshake(
    broker: &Broker,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(broker.config.connect_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn serve_websocket<S>(broker: Arc<Broker>, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(
        broker.config.connect_timeout,
        crate::websocket::accept(stream, crate::connection::max_packet(&broker.config)),
    )
    .await
    {
        Ok(Ok((r, w))) => connection::serve(broker, r, w, peer, None).await,
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "WebSocket handshake failed"),
        Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
    }
}
