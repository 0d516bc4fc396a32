//! What the broker's own integration tests share: a broker on a loopback port and a byte-level MQTT 5.0 client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skein_broker::Broker;
use skein_codec::{BytesMut, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Serves `broker` on an ephemeral loopback port, for the rest of the test's runtime.
#[allow(dead_code)] // Some binaries serve with small buffers only.
pub async fn serve(broker: Arc<Broker>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(skein_broker::listener::serve_tcp(broker, listener, Default::default()));
    addr
}

/// `serve` with socket buffers of about `size` bytes each way on every connection it accepts (they inherit the
/// listener's), so that a client that does not read blocks the broker's writes after a few kilobytes.
#[allow(dead_code)]
pub async fn serve_with_buffers(broker: Arc<Broker>, size: u32) -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(size).unwrap();
    socket.set_send_buffer_size(size).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(skein_broker::listener::serve_tcp(broker, listener, Default::default()));
    addr
}

/// Sends exactly the packets a test writes and reads exactly what comes, MQTT 5.0.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub async fn open(addr: SocketAddr) -> Client {
        Client { stream: TcpStream::connect(addr).await.unwrap(), buf: BytesMut::new() }
    }

    /// `open` with socket buffers of about `size` bytes each way.
    #[allow(dead_code)]
    pub async fn open_with_buffers(addr: SocketAddr, size: u32) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(size).unwrap();
        socket.set_send_buffer_size(size).unwrap();
        Client { stream: socket.connect(addr).await.unwrap(), buf: BytesMut::new() }
    }

    /// Opens a connection and connects as `id`, with a session that outlives it when `persistent` (expiry 300 s).
    #[allow(dead_code)] // Each test binary compiles this module; the AUTH tests connect their own way.
    pub async fn connect(addr: SocketAddr, id: &str, persistent: bool) -> Client {
        use skein_codec::ReasonCode;
        let mut c = Client::open(addr).await;
        let properties = Properties::from(skein_codec::PropertyValues {
            session_expiry_interval: persistent.then_some(300),
            ..Default::default()
        });
        c.send_connect(id, !persistent, 0, properties).await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::Success));
        c
    }

    /// Sends a 5.0 CONNECT as `id` with no will, user name or password; what comes back is the caller's to read.
    pub async fn send_connect(&mut self, id: &str, clean_start: bool, keep_alive: u16, properties: Properties) {
        self.send(Packet::Connect(Box::new(skein_codec::Connect {
            protocol: ProtocolVersion::V5,
            clean_start,
            keep_alive,
            properties,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })))
        .await;
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(ProtocolVersion::V5, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` once the broker has closed the connection; fails after 10 s without either.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, ProtocolVersion::V5, MAX_PACKET_SIZE).unwrap() {
                return Some(p);
            }
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf));
            if read.await.expect("an answer in time").unwrap() == 0 {
                return None;
            }
        }
    }
}
