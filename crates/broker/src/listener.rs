//! Accept loops. Every listener hands its streams to the same connection driver.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::connection;
use crate::tls::{Reloading, common_name};

/// Accepts MQTT over TCP on `listener` until the broker shuts down.
pub async fn serve_tcp(broker: Arc<Broker>, listener: TcpListener) {
    let mut shutdown = broker.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                broker.admit().await;
                // Latency over packet count: MQTT packets are small and each one is awaited by someone.
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                tokio::spawn(connection::serve(broker.clone(), r, w, peer, None));
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, and give the system a moment.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts MQTT over TLS on `listener` until the broker shuts down. The handshake runs in the connection's own task,
/// bounded by the CONNECT timeout. With `identity_as_username`, the client certificate's Common Name is the user
/// name (and a client without one is refused, as the listener then requires a certificate).
pub async fn serve_tls(broker: Arc<Broker>, listener: TcpListener, tls: Arc<Reloading>, identity_as_username: bool) {
    let mut shutdown = broker.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                broker.admit().await;
                let _ = stream.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let broker = broker.clone();
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(broker.config.connect_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let identity = if identity_as_username {
                        let name =
                            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| common_name(c));
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
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts MQTT over WebSocket on `listener` until the broker shuts down: `ws://`, or `wss://` with `tls`. Each
/// connection's TLS and WebSocket handshakes run in its own task, together bounded by the CONNECT timeout.
pub async fn serve_ws(broker: Arc<Broker>, listener: TcpListener, tls: Option<Arc<Reloading>>) {
    let mut shutdown = broker.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                broker.admit().await;
                let _ = stream.set_nodelay(true);
                let broker = broker.clone();
                let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.current()));
                tokio::spawn(async move {
                    let limit = broker.config.connect_timeout;
                    match acceptor {
                        None => serve_websocket(broker, stream, peer, limit).await,
                        Some(acceptor) => match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve_websocket(broker, s, peer, limit).await,
                            Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_websocket<S>(broker: Arc<Broker>, stream: S, peer: std::net::SocketAddr, limit: std::time::Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(limit, crate::websocket::accept(stream)).await {
        Ok(Ok((r, w))) => connection::serve(broker, r, w, peer, None).await,
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "WebSocket handshake failed"),
        Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
    }
}
