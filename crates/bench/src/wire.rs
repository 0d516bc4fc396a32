//! The generator's side of the wire: CONNECT/SUBSCRIBE through the codec, and PUBLISH written straight into the
//! send buffer (no per-message allocation), with the tracking header at the start of the payload.

use bytes::{BufMut, BytesMut};
use skein_codec::{
    Connect, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions, decode,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::track;

/// A connection to the broker: plain TCP, or TLS over it (`--tls`).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// TLS towards the broker: the CA that signed its certificate, and the name to check it for.
#[derive(Clone)]
pub struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts the certificates in the PEM file `ca`; checks the broker's certificate for `host`.
    pub fn new(ca: &std::path::Path, host: &str) -> Result<Tls, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
        {
            roots.add(cert.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        Ok(Tls { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), server_name })
    }
}

pub struct Client {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub version: ProtocolVersion,
    /// The broker's Receive Maximum from an MQTT 5.0 CONNACK (65,535 when absent or for 3.1.1).
    pub receive_maximum: u16,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub version: ProtocolVersion,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<Tls>,
    /// Persistent sessions (3.1.1 Clean Session 0; 5.0 a Session Expiry Interval), so the broker keeps - and, with
    /// persistence on, stores - what is in flight to them.
    pub persistent: bool,
}

fn err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

impl Client {
    /// Connects, sends CONNECT (clean unless `target.persistent`, keep alive off) and waits for a successful CONNACK.
    pub async fn connect(target: &Target, client_id: &str, stream: Option<TcpStream>) -> std::io::Result<Client> {
        let stream = match stream {
            Some(s) => s,
            None => TcpStream::connect(target.addr).await?,
        };
        stream.set_nodelay(true)?;
        let stream = match &target.tls {
            None => Stream::Plain(stream),
            Some(tls) => Stream::Tls(Box::new(tls.connector.connect(tls.server_name.clone(), stream).await?)),
        };
        let mut c = Client {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            version: target.version,
            receive_maximum: u16::MAX,
        };
        let connect = Connect {
            protocol: target.version,
            clean_start: !target.persistent,
            keep_alive: 0,
            properties: Properties::from(skein_codec::PropertyValues {
                session_expiry_interval: (target.persistent && target.version.is_v5()).then_some(300),
                ..Default::default()
            }),
            client_id: client_id.into(),
            will: None,
            username: target.username.as_deref().map(Into::into),
            password: target.password.as_deref().map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        };
        c.send(&Packet::Connect(Box::new(connect))).await?;
        match c.recv().await? {
            Packet::ConnAck(a) if !a.reason_code.is_error() => {
                c.receive_maximum = a.properties.receive_maximum.unwrap_or(u16::MAX);
                Ok(c)
            }
            Packet::ConnAck(a) => Err(err(format!("connection refused: {:?}", a.reason_code))),
            other => Err(err(format!("expected CONNACK, got {:?}", other.packet_type()))),
        }
    }

    pub async fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        packet.encode(self.version, &mut buf).map_err(|e| err(e.to_string()))?;
        self.stream.write_all(&buf).await?;
        self.stream.flush().await
    }

    pub async fn recv(&mut self) -> std::io::Result<Packet> {
        loop {
            if let Some(p) = decode(&mut self.rbuf, self.version, MAX_PACKET_SIZE).map_err(|e| err(e.to_string()))? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(err("broker closed the connection"));
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> std::io::Result<()> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(filter.into(), SubscriptionOptions { qos, ..Default::default() })],
        }))
        .await?;
        match self.recv().await? {
            Packet::SubAck(a) if a.reason_codes.iter().all(|c| !c.is_error()) => Ok(()),
            other => Err(err(format!("subscribe to {filter} failed: {other:?}"))),
        }
    }
}

/// Appends one PUBLISH with a `payload_len`-byte payload that starts with the tracking header.
pub fn put_publish(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    topic: &[u8],
    qos: QoS,
    packet_id: u16,
    payload_len: usize,
    header: (u32, u64, u64),
) {
    let payload_len = payload_len.max(track::HEADER);
    let remaining =
        2 + topic.len() + if qos == QoS::AtMostOnce { 0 } else { 2 } + usize::from(version.is_v5()) + payload_len;
    buf.reserve(5 + remaining);
    buf.put_u8(0x30 | ((qos as u8) << 1));
    skein_codec::put_varint(buf, remaining);
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic);
    if qos != QoS::AtMostOnce {
        buf.put_u16(packet_id);
    }
    if version.is_v5() {
        buf.put_u8(0);
    }
    let start = buf.len();
    buf.put_bytes(0, payload_len);
    track::write_header(&mut buf[start..], header.0, header.1, header.2);
}

/// A PUBLISH at the front of `buf`, read in place: what the subscriber loop needs of it, without building a
/// `Packet` (whose properties alone are hundreds of bytes to set up per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishView {
    /// The whole packet's length in `buf`.
    pub len: usize,
    pub qos: QoS,
    pub packet_id: u16,
    /// Where the payload lies in `buf`.
    pub payload: (usize, usize),
}

/// `Some` if `buf` starts with a whole, well-formed PUBLISH; `None` for anything else (another packet, a part of
/// one, or a malformed one), which the codec then reads.
pub fn view_publish(buf: &[u8], version: ProtocolVersion) -> Option<PublishView> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = match (first >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return None,
    };
    let (remaining, at) = varint(buf, 1)?;
    let len = at + remaining;
    let packet = buf.get(at..len)?;
    let topic_len = usize::from(u16::from_be_bytes(packet.get(..2)?.try_into().ok()?));
    let mut p = 2 + topic_len;
    let mut packet_id = 0;
    if qos != QoS::AtMostOnce {
        packet_id = u16::from_be_bytes(packet.get(p..p + 2)?.try_into().ok()?);
        p += 2;
    }
    if version.is_v5() {
        // The properties' length, then the properties, skipped.
        let (props, after) = varint(packet, p)?;
        p = after + props;
    }
    if p > packet.len() {
        return None;
    }
    Some(PublishView { len, qos, packet_id, payload: (at + p, len) })
}

/// The variable byte integer at `at` in `buf` (at most 4 bytes), and where what follows it starts.
fn varint(buf: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for shift in [0, 7, 14, 21] {
        let b = *buf.get(at)?;
        at += 1;
        value |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_publish_is_what_the_codec_reads() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for (qos, len) in [(QoS::AtMostOnce, 64), (QoS::AtLeastOnce, 200), (QoS::ExactlyOnce, 5)] {
                let mut buf = BytesMut::new();
                put_publish(&mut buf, version, b"bench/t", qos, 9, len, (3, 4, 5));
                let Some(Packet::Publish(p)) = decode(&mut buf, version, MAX_PACKET_SIZE).unwrap() else {
                    panic!("a PUBLISH")
                };
                assert!(buf.is_empty());
                assert_eq!((&p.topic[..], p.qos), ("bench/t", qos));
                assert_eq!(p.payload.len(), len.max(track::HEADER));
                assert_eq!(track::read_header(&p.payload), Some((3, 4, 5)));
                if qos != QoS::AtMostOnce {
                    assert_eq!(p.packet_id, 9);
                }
                // The in-place view reads the same packet the same way.
                let mut again = BytesMut::new();
                put_publish(&mut again, version, b"bench/t", qos, 9, len, (3, 4, 5));
                let v = view_publish(&again, version).expect("a PUBLISH");
                assert_eq!((v.len, v.qos, v.packet_id), (again.len(), qos, p.packet_id));
                assert_eq!(&again[v.payload.0..v.payload.1], &p.payload[..]);
                assert_eq!(view_publish(&again[..again.len() - 1], version), None, "a part of a packet");
            }
        }
    }

    #[test]
    fn a_remaining_length_of_more_than_four_bytes_is_left_to_the_codec() {
        assert_eq!(varint(&[0x80, 0x80, 0x80, 0x01], 0), Some((1 << 21, 4)));
        assert_eq!(view_publish(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], ProtocolVersion::V311), None);
    }

    #[test]
    fn the_view_skips_properties_and_leaves_other_packets_to_the_codec() {
        let publish = Packet::Publish(skein_codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: 77,
            properties: skein_codec::Properties::from(skein_codec::PropertyValues {
                message_expiry_interval: Some(60),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            }),
            payload: bytes::Bytes::from_static(b"the payload"),
        });
        let mut buf = BytesMut::new();
        publish.encode(ProtocolVersion::V5, &mut buf).unwrap();
        let v = view_publish(&buf, ProtocolVersion::V5).expect("a PUBLISH");
        assert_eq!((v.len, v.qos, v.packet_id), (buf.len(), QoS::AtLeastOnce, 77));
        assert_eq!(&buf[v.payload.0..v.payload.1], b"the payload");
        let mut ack = BytesMut::new();
        Packet::PubRel(skein_codec::Ack::new(3)).encode(ProtocolVersion::V5, &mut ack).unwrap();
        assert_eq!(view_publish(&ack, ProtocolVersion::V5), None);
    }
}
