//! Accept loops. Every listener hands its streams to the same connection driver.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::connection;

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
                // Latency over packet count: MQTT packets are small and each one is awaited by someone.
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                tokio::spawn(connection::serve(broker.clone(), r, w, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, and give the system a moment.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
