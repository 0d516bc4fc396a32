//! The body of the connection-driver fuzz target (`fuzz/fuzz_targets/connection.rs`), kept here so that it also
//! runs, bounded, under `cargo test` (`tests/driver_fuzz.rs`). One call plays `data` as everything a client sends
//! on one connection, over an in-memory stream, through the same `connection::serve` every listener uses.
//!
//! It panics when the driver is wrong: the driver panicked, it did not finish after the client's end of stream, or
//! what it wrote back is not a well-formed packet stream of the connection's protocol version.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use skein_codec::{MAX_PACKET_SIZE, Packet, ProtocolVersion, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Broker;

/// Longer than anything the driver waits for by itself once the client's side has ended (the failed-login delay,
/// the grace a closing connection has to send what is left), so hitting it means the driver hangs.
const BOUND: Duration = Duration::from_secs(20);

/// Serves `data` as one client's whole byte stream, then its end of stream; returns what the server sent back.
pub async fn connection(broker: Arc<Broker>, data: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (reader, writer) = tokio::io::split(server);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let served = tokio::spawn(crate::connection::serve(broker, reader, writer, peer, None));
    let (mut rx, mut tx) = tokio::io::split(&mut client);
    let send = async move {
        // The server may close before taking everything: the rest is simply not read.
        let _ = tx.write_all(data).await;
        let _ = tx.shutdown().await;
    };
    let mut out = Vec::new();
    let recv = rx.read_to_end(&mut out);
    let finished = tokio::time::timeout(BOUND, async {
        let (_, read) = tokio::join!(send, recv);
        read
    })
    .await;
    assert!(finished.is_ok(), "the server never closed its side after the client's end of stream");
    match tokio::time::timeout(BOUND, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the connection driver failed: {e}"),
        Err(_) => panic!("the connection driver did not finish after the client's end of stream"),
    }
    check_output(&out);
    out
}

/// The server's bytes must be whole, well-formed packets: a CONNACK first (3.x: two bytes of body; 5.0: more), or
/// nothing at all when the connection was closed before one was due.
pub fn check_output(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert_eq!(out[0], 0x20, "the server's first packet is a CONNACK: {out:02x?}");
    let version = if out.get(1) == Some(&2) { ProtocolVersion::V311 } else { ProtocolVersion::V5 };
    let mut buf = BytesMut::from(out);
    let mut first = true;
    while !buf.is_empty() {
        match decode(&mut buf, version, MAX_PACKET_SIZE) {
            Ok(Some(p)) => {
                assert!(!first || matches!(p, Packet::ConnAck(_)), "first packet {p:?}");
                first = false;
            }
            Ok(None) => panic!("the server's output ends inside a packet: {out:02x?}"),
            Err(e) => panic!("the server sent a malformed {version} packet ({e}): {out:02x?}"),
        }
    }
}
