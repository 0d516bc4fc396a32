//! Accept loops. Every listener hands its streams to the same connection driver.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;
use crate::connection;
use crate::tls::{Reloading, common_name};

/// Accepts on `listener` until the broker shuts down, at most `max_connection_rate` a second, and runs `serve` for
/// each stream in a task of its own (so no handshake holds up the next client).
async fn accept_loop<F, Fut>(broker: Arc<Broker>, listener: TcpListener, serve: F)
where
    F: Fn(Arc<Broker>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
                tokio::spawn(serve(broker.clone(), stream, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, and give the system a moment.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts MQTT over TCP on `listener` until the broker shuts down.
pub async fn serve_tcp(broker: Arc<Broker>, listener: TcpListener) {
    accept_loop(broker, listener, |broker, stream, peer| {
        let (r, w) = stream.into_split();
        connection::serve(broker, r, w, peer, None)
    })
    .await
}

/// Accepts MQTT over TLS on `listener` until the broker shuts down. The handshake is bounded by the CONNECT timeout.
/// With `identity_as_username`, the client certificate's Common Name is the user name (and a client without one is
/// refused, as the listener then requires a certificate).
pub async fn serve_tls(broker: Arc<Broker>, listener: TcpListener, tls: Arc<Reloading>, identity_as_username: bool) {
    accept_loop(broker, listener, move |broker, stream, peer| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        async move {
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
pub async fn serve_ws(broker: Arc<Broker>, listener: TcpListener, tls: Option<Arc<Reloading>>) {
    accept_loop(broker, listener, move |broker, stream, peer| {
        let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.current()));
        async move {
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
    match tokio::time::timeout(broker.config.connect_timeout, crate::websocket::accept(stream)).await {
        Ok(Ok((r, w))) => connection::serve(broker, r, w, peer, None).await,
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "WebSocket handshake failed"),
        Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
    }
}
