//! The connection driver: one task per connection reads and handles packets and writes what the session has for
//! the client. It is thin around the session state machine and the broker; what it adds is I/O, time (CONNECT
//! timeout, keep alive) and the order of durable writes and acknowledgements.
//!
//! Reading and writing wait side by side, never one on the other: a write the client does not take yet stops
//! reading only when the acknowledgements queued behind it pass a bound (a client that does not read), and no lock
//! is held while writing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::session::IncomingQos2;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use skein_codec::topic::Filter;
use skein_codec::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, UnsubAck, decode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::broker::{Attached, Broker, ConnectRequest, lock};
use crate::message::Message;
use crate::stats::Stats;

/// Acknowledgements queued behind a write the client has not taken beyond this stop reading until it does.
const CONTROL_LIMIT: usize = 256 * 1024;
/// Room made for each read of a busy connection.
const READ_CHUNK: usize = 16 * 1024;

/// Room to make for the next read into `pending`: `READ_CHUNK`, or, while a larger packet is coming, the rest of it,
/// up to 4 times what has arrived (a claimed size alone allocates nothing much). A large packet then lands in one
/// allocation or a few, where room made a chunk at a time moved it into a new, larger one again and again whenever
/// earlier packets' payloads still held the old.
fn read_room(pending: &BytesMut) -> usize {
    let rest = skein_codec::packet_size(pending).map_or(0, |size| size.saturating_sub(pending.len()));
    rest.min(pending.len().saturating_mul(4)).max(READ_CHUNK)
}
/// Room made for each read of the handshake (CONNECT, AUTH). An idle connection keeps no buffer at all: a kept one,
/// even this small, was a fifth of an idle connection's memory.
const HANDSHAKE_READ: usize = 1024;

/// A connection's byte source. `poll_ready` tells when a read would not block, without holding a buffer (or a
/// future: it uses the socket's own waker slot), so that an idle connection costs neither; a source that cannot tell
/// says ready at once and is read with a buffer as usual.
///
/// A plain TCP source parks its connection while idle (see `parking`): `into_tcp` gives back the socket it and its
/// writer half share.
pub trait Source: AsyncRead + Unpin + Send + 'static {
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>>;

    /// True where `into_tcp` gives the socket back.
    const PARKS: bool = false;

    /// The socket this source and `writer` are the halves of, or both back.
    fn into_tcp<W: 'static>(self, writer: W) -> Result<tokio::net::TcpStream, (Self, W)>
    where
        Self: Sized,
    {
        Err((self, writer))
    }
}

impl Source for tokio::net::tcp::OwnedReadHalf {
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }

    const PARKS: bool = true;

    fn into_tcp<W: 'static>(self, writer: W) -> Result<tokio::net::TcpStream, (Self, W)> {
        use std::any::Any;
        use tokio::net::tcp::OwnedWriteHalf;
        let mut slot = Some(writer);
        let Some(w) = (&mut slot as &mut dyn Any).downcast_mut::<Option<OwnedWriteHalf>>().and_then(Option::take)
        else {
            return Err((self, slot.take().expect("the writer is still there")));
        };
        self.reunite(w).map_err(|e| {
            // Halves of two sockets: not ours to join.
            let mut back = Some(e.1);
            let w = (&mut back as &mut dyn Any).downcast_mut::<Option<W>>().and_then(Option::take);
            (e.0, w.expect("the writer is an OwnedWriteHalf"))
        })
    }
}

/// TLS buffers records inside the stream, so readiness cannot be told without reading: read as usual.
impl Source for tokio::io::ReadHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
/// An in-memory stream (the connection-driver fuzz target and tests): always readable as far as we can tell.
impl Source for tokio::io::ReadHalf<tokio::io::DuplexStream> {
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// How long a closing connection gets to send what is left.
const WRITER_GRACE: Duration = Duration::from_secs(3);
/// How long a refused login waits for its CONNACK.
const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);

/// Why a connection ends, and what that means for the client and its will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// DISCONNECT from the client; the will is sent only for 5.0's 0x04.
    Disconnect {
        send_will: bool,
    },
    /// Another connection took the session over.
    TakenOver,
    Shutdown,
    KeepAlive,
    /// A protocol violation or malformed packet, with the 5.0 reason to give.
    Violation(ReasonCode),
    /// The client closed the network connection, or it failed.
    Closed,
    /// Not closed: idle long enough to park (`parking`). Never reaches the teardown.
    Idle,
}

impl Close {
    /// The DISCONNECT reason an MQTT 5.0 client is told, if any.
    fn reason(self) -> Option<ReasonCode> {
        match self {
            Close::Disconnect { .. } | Close::Closed | Close::Idle => None,
            Close::TakenOver => Some(ReasonCode::SessionTakenOver),
            Close::Shutdown => Some(ReasonCode::ServerShuttingDown),
            Close::KeepAlive => Some(ReasonCode::KeepAliveTimeout),
            // A decode error can carry a CONNECT-only reason (a second CONNECT with a bad protocol name gives
            // 0x84); a second CONNECT is a protocol error whatever is in it [MQTT-3.1.0-2].
            Close::Violation(code) if !code.allowed_in(skein_codec::PacketType::Disconnect) => {
                Some(ReasonCode::ProtocolError)
            }
            Close::Violation(code) => Some(code),
        }
    }

    /// [MQTT-3.1.2-8]: the will is published unless the client disconnected cleanly. A shutting-down node does
    /// not publish wills: the session stays, and the client will reconnect.
    fn sends_will(self) -> bool {
        match self {
            Close::Disconnect { send_will } => send_will,
            Close::Shutdown | Close::Idle => false,
            _ => true,
        }
    }
}

/// Why the broker closed a connection through its kick (`session::Kick`): a shutdown, or another connection taking
/// the session.
fn kicked_close(reason: ReasonCode) -> Close {
    match reason {
        ReasonCode::ServerShuttingDown => Close::Shutdown,
        _ => Close::TakenOver,
    }
}

/// The sending side of a connection, driven by the task that also reads it: what the session has for the client is
/// moved into `outbox` (only once the last of it is written, so that what waits behind a slow client stays in the
/// session, where it is bounded) and written without holding up reading; large payloads are written from where they
/// are, by vectored writes.
struct Out<W> {
    writer: W,
    outbox: crate::session::Outbox,
    /// Written since the last flush: TLS and WebSocket writers hold bytes until flushed.
    unflushed: bool,
    /// Times the session's packets were moved in: the packet loop's timer tells from it that the connection was
    /// not idle.
    sent: u32,
}

impl<W> Out<W> {
    fn new(writer: W) -> Out<W> {
        Out { writer, outbox: crate::session::Outbox::default(), unflushed: false, sent: 0 }
    }
}

impl<W: AsyncWrite + Unpin> Out<W> {
    /// True while bytes are on their way out.
    fn busy(&self) -> bool {
        !self.outbox.is_empty() || self.unflushed
    }

    /// Writes and flushes the outbox; ready once all of it is out, or with the write's error.
    fn poll_send(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        while !self.outbox.is_empty() {
            let writer = std::pin::Pin::new(&mut self.writer);
            let n = if self.outbox.is_contiguous() {
                std::task::ready!(writer.poll_write(cx, &self.outbox.buf))?
            } else {
                let mut slices = [std::io::IoSlice::new(&[]); 16];
                let k = self.outbox.slices(&mut slices);
                std::task::ready!(writer.poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.outbox.advance(n);
            self.unflushed = true;
        }
        if self.unflushed {
            std::task::ready!(std::pin::Pin::new(&mut self.writer).poll_flush(cx))?;
            self.unflushed = false;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// Serves one client connection to the end. `identity` is a user name the transport has already proven (a TLS
/// client certificate's Common Name, Mosquitto's `use_identity_as_username`): it replaces the CONNECT's user name,
/// and no password is checked.
pub fn serve<R, W>(
    broker: Arc<Broker>,
    reader: R,
    writer: W,
    peer: SocketAddr,
    identity: Option<String>,
) -> impl std::future::Future<Output = ()>
where
    R: Source,
    W: AsyncWrite + Unpin + Send + 'static,
{
    serve_held(broker, reader, writer, peer, identity, None)
}

/// `serve`, the connection counted in `held` (its listener's limit) until it ends, parked or not.
pub(crate) fn serve_held<R, W>(
    broker: Arc<Broker>,
    reader: R,
    writer: W,
    peer: SocketAddr,
    identity: Option<String>,
    held: Option<crate::listener::Held>,
) -> impl std::future::Future<Output = ()>
where
    R: Source,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let guard = broker.connection_opened();
    drive(Start::Open(Box::new(Opening { broker, writer, peer, identity, guard, held })), reader)
}

/// What only the handshake needs. Boxed: an async function's arguments are part of its future for its whole life.
struct Opening<W> {
    broker: Arc<Broker>,
    writer: W,
    peer: SocketAddr,
    identity: Option<String>,
    guard: crate::broker::ConnectionGuard,
    held: Option<crate::listener::Held>,
}

/// How a connection's task begins: with the handshake, or resumed from parking.
enum Start<W> {
    Open(Box<Opening<W>>),
    Resumed(Box<Client>, W),
}

/// A connection's task: the handshake, then the packet loop to the connection's end, or until it is idle long
/// enough to park (it goes on in a new task when woken: `resume`).
///
/// Only `live` and the packet loop are inline in the task. Every other phase is boxed: a future is as large as its
/// largest state, and the handshake's and teardown's states (packets, properties, the session take-over) would
/// otherwise sit in every connection's task for its whole life. For the same reason a `Live` is never an argument
/// here or of a function this awaits: arguments keep their place for the whole body, beside the local they move to.
async fn drive<R, W>(start: Start<W>, mut reader: R)
where
    R: Source,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut live = match start {
        Start::Open(opening) => match Box::pin(handshake(&mut reader, opening)).await {
            Some(live) => live,
            None => return,
        },
        Start::Resumed(client, writer) => Live { client: *client, out: Out::new(writer), rbuf: BytesMut::new() },
    };
    loop {
        let Live { client, out, rbuf } = &mut live;
        let close = client.run(&mut reader, out, rbuf, R::PARKS).await;
        if close != Close::Idle {
            return Box::pin(teardown(live, close)).await;
        }
        match park(live, reader) {
            Parking::Parked => return,
            Parking::Busy(l, r) => (live, reader) = (l, r),
            Parking::Kicked(l, close) => return Box::pin(teardown(l, close)).await,
        }
    }
}

/// How an attempt to park ended.
enum Parking<R, W> {
    Parked,
    /// Something came for it meanwhile, or it cannot park: it goes on as it was.
    Busy(Live<W>, R),
    /// Its session kicked it meanwhile.
    Kicked(Live<W>, Close),
}

/// Parks an idle connection: leaves a waker with its session (signal and kick) that resumes it, and hands its socket
/// and the rest of it to the parking thread.
fn park<R: Source, W: 'static>(live: Live<W>, reader: R) -> Parking<R, W> {
    let broker = live.client.conn.broker.clone();
    let Some(parking) = broker.parking() else { return Parking::Busy(live, reader) };
    let wake = parking.wake();
    let waker = std::task::Waker::from(wake.clone());
    if let Some(reason) = live.client.waker.kicked() {
        return Parking::Kicked(live, kicked_close(reason));
    }
    if live.client.waker.register(&waker) {
        return Parking::Busy(live, reader);
    }
    let Live { client, out, rbuf } = live;
    let Out { writer, .. } = out;
    let stream = match reader.into_tcp(writer).map(tokio::net::TcpStream::into_std) {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            // Deregistered but not converted: the socket is gone with it, and so is the client.
            tracing::warn!(error = %e, "idle connection could not be parked");
            let out = Out::new(ParkFailed);
            let live = Live { client, out, rbuf };
            tokio::spawn(async move { teardown(live, Close::Closed).await });
            return Parking::Parked;
        }
        Err((reader, writer)) => {
            return Parking::Busy(Live { client, out: Out::new(writer), rbuf }, reader);
        }
    };
    let due = keep_alive_period(client.keep_alive).map(|p| client.last_read.into_std() + p);
    let client = Box::new(Client { has_parked: true, ..client });
    parking.park(crate::parking::Parked { stream, due, wake, client });
    Parking::Parked
}

/// A parked connection, woken: back to a task of its own, registered with the runtime again.
pub(crate) async fn resume(client: Box<Client>, stream: std::net::TcpStream) {
    match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => {
            let (reader, writer) = stream.into_split();
            drive(Start::Resumed(client, writer), reader).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "parked connection could not be resumed");
            let live = Live { client: *client, out: Out::new(ParkFailed), rbuf: BytesMut::new() };
            Box::pin(teardown(live, Close::Closed)).await;
        }
    }
}

/// The writer of a connection whose socket was lost between parking and running: every write fails.
struct ParkFailed;

impl AsyncWrite for ParkFailed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A connected client between its CONNACK and its teardown.
struct Live<W> {
    client: Client,
    out: Out<W>,
    /// Bytes read after the CONNECT.
    rbuf: BytesMut,
}

/// A connected client but for its socket: what a parked connection keeps.
pub(crate) struct Client {
    conn: Conn,
    /// Woken when the session has something new for this connection.
    waker: Arc<crate::session::Signal>,
    keep_alive: u16,
    /// The last time bytes came from the client, for its keep alive.
    last_read: tokio::time::Instant,
    /// It has parked before (see `Client::park_after`).
    has_parked: bool,
    /// Dropped last, when the teardown is over: tells whoever takes the session over.
    done: crate::broker::Done,
    _counted: Counted,
    _held: Option<crate::listener::Held>,
}

/// CONNECT to CONNACK: reads and checks the CONNECT, authenticates, opens or takes over the session, and answers.
/// `None` when the connection ends here (refused, timed out, or gone).
async fn handshake<R, W>(reader: &mut R, opening: Box<Opening<W>>) -> Option<Live<W>>
where
    R: Source,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Opening { broker, mut writer, peer, identity, guard, held } = *opening;
    let broker = &broker;
    let max_packet = max_packet(&broker.config);
    let mut rbuf = BytesMut::new();
    let first =
        tokio::time::timeout(broker.config.connect_timeout, read_first(broker, reader, &mut rbuf, max_packet)).await;
    let mut connect = match first {
        Ok(Ok(c)) => {
            Stats::add(&broker.stats.messages_received, 1);
            c
        }
        Ok(Err(refusal)) => {
            if let Some(bytes) = refusal {
                let _ = writer.write_all(&bytes).await;
                let _ = writer.flush().await;
            }
            let _ = writer.shutdown().await;
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return None;
        }
    };
    let mut certified = identity.is_some();
    if let Some(name) = identity {
        connect.username = Some(name.into());
        connect.password = None;
    }
    let version = connect.protocol;
    let refuse = |code: ReasonCode| {
        let mut buf = BytesMut::new();
        let mut properties = Properties::default();
        if version.is_v5() {
            // What a person reading the client's log needs (MQTT 5.0 section 3.2.2.3.10).
            properties.reason_string = refusal_text(code).map(Into::into);
        }
        let _ = Packet::ConnAck(ConnAck { session_present: false, reason_code: code, properties })
            .encode(version, &mut buf);
        buf
    };
    // MQTT 5.0 enhanced authentication (section 4.12): the method's exchange, over AUTH packets, before any CONNACK.
    let mut auth_method = None;
    let mut auth_data = None;
    if let Some(name) = connect.properties.authentication_method.clone()
        && let Some(method) = broker.auth_method(&name)
    {
        match authenticate(broker, &*method, &name, &connect, reader, &mut writer, &mut rbuf, max_packet).await {
            Ok((data, username)) => {
                if let Some(u) = username {
                    connect.username = Some(u.into());
                }
                certified = true;
                auth_data = data;
                auth_method = Some((name, method));
            }
            Err(code) => {
                Stats::add(&broker.stats.connections_refused, 1);
                let failures = broker.stats.auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(%peer, client_id = %connect.client_id, method = %name, failures, "authentication failed");
                tokio::time::sleep(FAILED_LOGIN_DELAY).await;
                let _ = writer.write_all(&refuse(code)).await;
                let _ = writer.flush().await;
                return None;
            }
        }
    }
    let credentials = check_credentials(broker, &connect, certified).await;
    let credentials_refused = credentials.is_err();
    let accepted = match accept(broker, &connect, credentials).and_then(|a| {
        if broker.stats.client_connected(broker.config.max_connections) { Ok(a) } else { Err(ReasonCode::ServerBusy) }
    }) {
        Ok(a) => a,
        Err(code) => {
            Stats::add(&broker.stats.connections_refused, 1);
            if credentials_refused && matches!(code, ReasonCode::BadUserNameOrPassword | ReasonCode::NotAuthorized) {
                // A guesser waits for every answer; the delay holds only this connection.
                let failures = broker.stats.auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let username = connect.username.as_deref().unwrap_or("");
                tracing::info!(%peer, client_id = %connect.client_id, username, failures, "authentication failed");
                tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            }
            tracing::info!(%peer, client_id = %connect.client_id, reason = ?code, "connection refused");
            let _ = writer.write_all(&refuse(code)).await;
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
            return None;
        }
    };
    // Counted in until the connection's teardown ends, whichever way it ends.
    let counted = Counted(guard);
    let connected_at = std::time::SystemTime::now();
    let connecting = broker.begin_connect(&accepted.client_id);
    let receive_maximum = connect.properties.receive_maximum;
    let client_max_packet = connect.properties.maximum_packet_size;
    // The client id is unique across the cluster: other nodes close their connection of it, and hand its session
    // over when this one resumes it.
    let imported = match broker.cluster().take_over(
        &accepted.client_id,
        !connect.clean_start,
        accepted.persistent,
        connected_at,
    ) {
        Some(taken) => taken.await,
        None => None,
    };
    let request = ConnectRequest {
        client_id: accepted.client_id.clone(),
        clean_start: connect.clean_start,
        persistent: accepted.persistent,
        version,
        max_packet_size: client_max_packet,
        receive_maximum,
        topic_alias_maximum: connect.properties.topic_alias_maximum.unwrap_or(0),
        session_expiry: if version.is_v5() {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else {
            // Below u32::MAX, which means never.
            broker
                .config
                .persistent_client_expiration
                .map_or(u32::MAX, |d| d.as_secs().min(u64::from(u32::MAX - 1)) as u32)
        },
        username: connect.username.as_deref().map(ByteString::from),
        imported,
        connected_at,
    };
    let attached = broker.connect(request).await;
    drop(connecting);
    let attached = match attached {
        Ok(a) => {
            if let Some(later) = a.superseded_by {
                // Answered, then closed as taken over, its session ended here: the later connection is the client.
                let (broker, client_id) = (broker.clone(), accepted.client_id.clone());
                tokio::spawn(async move { broker.take_over(&client_id, false, later).await });
            }
            a
        }
        Err(e) => {
            tracing::error!(client_id = %accepted.client_id, error = %e, "session could not be opened");
            let _ = writer.write_all(&refuse(ReasonCode::UnspecifiedError)).await;
            let _ = writer.flush().await;
            return None;
        }
    };
    // In a block: a packet or its properties left in scope would be kept in the connection's task for its whole
    // life (borrowed locals keep their place in an async function's state until their scope ends).
    let out = {
        let mut properties = Properties::default();
        if version.is_v5() {
            if accepted.assigned {
                properties.assigned_client_identifier = Some(accepted.client_id.clone());
            }
            properties.server_keep_alive = accepted.server_keep_alive;
            if broker.config.max_topic_alias > 0 {
                properties.topic_alias_maximum = Some(broker.config.max_topic_alias);
            }
            if let Some((name, _)) = &auth_method {
                properties.authentication_method = Some(name.clone());
                properties.authentication_data = auth_data.map(Bytes::from);
            }
            if connect.properties.request_response_information == Some(1) {
                // A topic this client may build response topics on (MQTT 5.0 section 4.10); a naming convention only.
                properties.response_information = Some(format!("response/{}", accepted.client_id).into());
            }
            if !broker.config.retain_available {
                properties.retain_available = Some(0);
            }
            if broker.config.receive_maximum() < u16::MAX {
                properties.receive_maximum = Some(broker.config.receive_maximum());
            }
            if broker.config.max_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(broker.config.max_qos as u8);
            }
            if broker.config.max_packet_size != 0 {
                properties.maximum_packet_size = u32::try_from(broker.config.max_packet_size).ok();
            }
        }
        let connack = Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            reason_code: ReasonCode::Success,
            properties,
        });
        let mut out = BytesMut::new();
        let _ = connack.encode(version, &mut out);
        out
    };
    Stats::add(&broker.stats.messages_sent, 1);
    Stats::add(&broker.stats.bytes_sent, out.len() as u64);
    // TCP needs no flush; TLS and WebSocket writers hold what was written until flushed.
    if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
        broker.disconnect(&attached.session, attached.connection_id);
        return None;
    }
    tracing::debug!(
        %peer, client_id = %accepted.client_id, connection = attached.connection_id, %version,
        present = attached.session_present, "connected"
    );

    // A resumed session may have messages waiting: the first turn of the packet loop sends them.
    attached.waker.notify();
    let Attached { session, connection_id, done, waker, .. } = attached;
    let out = Out::new(writer);
    let conn = Conn {
        broker: broker.clone(),
        session,
        connection_id,
        version,
        persistent: accepted.persistent,
        will: connect.will.as_ref().map(owned_will),
        username: connect.username.as_deref().map(Box::from),
        aliases: Box::default(),
        publish_rate: (broker.config.max_publish_rate > 0.0).then(|| {
            Box::new(Throttle { bucket: crate::stats::Bucket::new(broker.config.max_publish_rate), wait: None })
        }),
        auth_method: auth_method.map(|(name, method)| Box::new(Enhanced { name, method, exchange: None })),
    };
    let client = Client {
        conn,
        waker,
        keep_alive: accepted.keep_alive,
        last_read: tokio::time::Instant::now(),
        has_parked: false,
        done,
        _counted: counted,
        _held: held,
    };
    Some(Live { client, out, rbuf })
}

/// Closes a connection: the writer's last words, the session let go, the will.
async fn teardown<W: AsyncWrite + Unpin>(live: Live<W>, close: Close) {
    let Live { client, mut out, .. } = live;
    let Client { conn, done, _counted, _held, .. } = client;
    let broker = &conn.broker;
    let (session, connection_id, version) = (&conn.session, conn.connection_id, conn.version);
    // What is left to say (the session's last packets for this connection, then a 5.0 DISCONNECT), given a moment,
    // then the session is let go of.
    let farewell = close.reason().filter(|_| version.is_v5()).map(|reason| {
        let mut buf = BytesMut::new();
        let _ = Packet::Disconnect(Disconnect::new(reason)).encode(version, &mut buf);
        buf
    });
    let last_words = async {
        loop {
            std::future::poll_fn(|cx| out.poll_send(cx)).await?;
            if !conn.fill(&mut out) {
                break;
            }
        }
        if let Some(bytes) = farewell {
            out.writer.write_all(&bytes).await?;
            out.writer.flush().await?;
        }
        out.writer.shutdown().await
    };
    let _ = tokio::time::timeout(WRITER_GRACE, last_words).await;
    broker.disconnect(session, connection_id);
    tracing::debug!(client_id = %conn.session.client_id, connection = connection_id, reason = ?close, "disconnected");
    if close.sends_will()
        && let Some(will) = conn.will
    {
        // The ACL may have changed (SIGHUP) since the CONNECT was let in with this will.
        if !broker.may_publish(conn.username.as_deref(), &conn.session.client_id, &will.topic) {
            Stats::add(&broker.stats.acl_denied, 1);
            tracing::debug!(client_id = %conn.session.client_id, topic = %will.topic, "will refused by the ACL");
            drop(done);
            return;
        }
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let (persistent, expiry) = {
            let state = lock(&session.state);
            (state.persistent, state.expiry)
        };
        let will = Message::from_will(*will, conn.session.client_id.clone());
        if delay > 0 && persistent {
            // Sent when the delay or the session ends, whichever is first (MQTT 5.0 section 3.1.3.2.2).
            let delay = Duration::from_secs(u64::from(delay.min(expiry)));
            broker.delay_will(&conn.session.client_id, connection_id, will, delay);
        } else if broker.publish(will).durable {
            let _ = broker.flush().await;
        }
    }
    drop(done);
}

/// The will, copied out of the read buffer it arrived in (which would otherwise stay allocated while it waits).
/// Boxed: most connections have none, and an inline one (its properties are ~400 bytes) would sit in every
/// connection's task for its whole life.
fn owned_will(w: &skein_codec::Will) -> Box<skein_codec::Will> {
    Box::new(skein_codec::Will {
        topic: ByteString::from(&*w.topic),
        payload: Bytes::copy_from_slice(&w.payload),
        qos: w.qos,
        retain: w.retain,
        properties: w.properties.clone(),
    })
}

/// A client counted in `clients_connected`, counted out when dropped.
/// Holds the connection's `ConnectionGuard` too (one `Arc` of the broker for both).
struct Counted(crate::broker::ConnectionGuard);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.broker().stats.client_disconnected();
    }
}

/// Reads until the first packet, which must be CONNECT [MQTT-3.1.0-1]. On refusal returns the bytes to send
/// before closing, if the specification gives any.
async fn read_first<R: AsyncRead + Unpin>(
    broker: &Broker,
    reader: &mut R,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<Box<Connect>, Option<BytesMut>> {
    loop {
        match decode(rbuf, ProtocolVersion::V311, max_packet) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                tracing::debug!(packet = %other.packet_type(), "first packet is not CONNECT");
                return Err(None);
            }
            Ok(None) => {}
            Err(e) => return Err(connect_refusal(rbuf, &e)),
        }
        rbuf.reserve(HANDSHAKE_READ);
        match reader.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => Stats::add(&broker.stats.bytes_received, n as u64),
        }
    }
}

/// Runs an enhanced authentication exchange for a CONNECT: AUTH 0x18 to the client and its AUTH 0x18 answers, until
/// the method decides. Ok carries the final Authentication Data and the user name the method names.
#[allow(clippy::too_many_arguments)]
async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    broker: &Broker,
    method: &dyn crate::auth::AuthMethod,
    name: &ByteString,
    connect: &Connect,
    reader: &mut R,
    writer: &mut W,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<(Option<Vec<u8>>, Option<String>), ReasonCode> {
    use crate::auth::AuthStep;
    let mut exchange = method.start(&connect.client_id);
    let mut data = connect.properties.authentication_data.clone();
    loop {
        match exchange.step(data.as_deref()) {
            AuthStep::Success { data, username } => return Ok((data, username)),
            AuthStep::Failure => return Err(ReasonCode::NotAuthorized),
            AuthStep::Continue(challenge) => {
                let mut buf = BytesMut::new();
                let _ = auth_packet(ReasonCode::ContinueAuthentication, name, challenge)
                    .encode(ProtocolVersion::V5, &mut buf);
                if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                    return Err(ReasonCode::UnspecifiedError);
                }
                let next = tokio::time::timeout(broker.config.connect_timeout, async {
                    loop {
                        match decode(rbuf, ProtocolVersion::V5, max_packet) {
                            Ok(Some(p)) => return Ok(p),
                            Ok(None) => {}
                            Err(e) => return Err(e.reason_code()),
                        }
                        rbuf.reserve(HANDSHAKE_READ);
                        match reader.read_buf(rbuf).await {
                            Ok(0) | Err(_) => return Err(ReasonCode::UnspecifiedError),
                            Ok(_) => {}
                        }
                    }
                })
                .await
                .map_err(|_| ReasonCode::NotAuthorized)??;
                match next {
                    // [MQTT-4.12.0-5]: the same method throughout.
                    Packet::Auth(mut a)
                        if a.reason_code == ReasonCode::ContinueAuthentication
                            && a.properties.authentication_method.as_ref() == Some(name) =>
                    {
                        data = a.properties.take().authentication_data;
                    }
                    _ => return Err(ReasonCode::ProtocolError),
                }
            }
        }
    }
}

fn auth_packet(reason_code: ReasonCode, method: &ByteString, data: Option<Vec<u8>>) -> Packet {
    let properties = Properties::from(skein_codec::PropertyValues {
        authentication_method: Some(method.clone()),
        authentication_data: data.map(Bytes::from),
        ..Default::default()
    });
    Packet::Auth(skein_codec::Auth { reason_code, properties })
}

/// The CONNACK for a CONNECT that failed to decode: 3.x return code 1 for an unsupported protocol level
/// [MQTT-3.1.2-2]; for 5.0 the error's reason code (section 3.1.4); otherwise nothing, the connection just closes.
fn connect_refusal(rbuf: &BytesMut, e: &DecodeError) -> Option<BytesMut> {
    tracing::debug!(error = %e, "CONNECT refused");
    let v5 = peek_level(rbuf) == Some(5);
    let mut buf = BytesMut::new();
    let (version, code) = match e {
        DecodeError::UnsupportedProtocolLevel { .. } | DecodeError::InvalidProtocolName(_) if !v5 => {
            (ProtocolVersion::V311, ReasonCode::UnsupportedProtocolVersion)
        }
        _ if v5 => (ProtocolVersion::V5, e.reason_code()),
        _ => return None,
    };
    let code = if code.allowed_in(skein_codec::PacketType::ConnAck) { code } else { ReasonCode::MalformedPacket };
    let _ = Packet::ConnAck(ConnAck { session_present: false, reason_code: code, properties: Properties::default() })
        .encode(version, &mut buf);
    Some(buf)
}

/// The Reason String of a refused MQTT 5.0 CONNECT.
fn refusal_text(code: ReasonCode) -> Option<&'static str> {
    Some(match code {
        ReasonCode::BadUserNameOrPassword => "bad user name or password",
        ReasonCode::NotAuthorized => {
            "not authorized: this server wants a user name and password, or a certificate; or the ACL does not let \
             this client publish its will"
        }
        ReasonCode::RetainNotSupported => {
            "retained messages are off here (retain_available): a will cannot be retained"
        }
        ReasonCode::BadAuthenticationMethod => "this authentication method is not offered here",
        ReasonCode::ServerBusy => "too many connections (max_connections)",
        ReasonCode::ServerUnavailable => "the server is shutting down",
        ReasonCode::ClientIdentifierNotValid => "client identifier not valid",
        ReasonCode::ProtocolError => "protocol error during authentication",
        ReasonCode::UnspecifiedError => "the session could not be opened",
        _ => return None,
    })
}

/// The protocol level byte of a CONNECT at the start of `buf`, if it is there.
fn peek_level(buf: &[u8]) -> Option<u8> {
    let len_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let body = buf.get(1 + len_bytes..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_len).copied()
}

/// What the checks of a CONNECT decided.
struct Accepted {
    client_id: ByteString,
    assigned: bool,
    persistent: bool,
    /// Seconds; 0 = no keep alive.
    keep_alive: u16,
    /// Sent to a 5.0 client when the server overrides its keep alive.
    server_keep_alive: Option<u16>,
}

/// The password file's answer to a CONNECT; a certificate already proved who the client is. A hash check costs up
/// to tens of milliseconds (Argon2id), so it runs on the blocking pool, never on a runtime worker.
async fn check_credentials(broker: &Broker, c: &Connect, certified: bool) -> Result<(), ReasonCode> {
    if certified {
        return Ok(());
    }
    let auth = broker.auth();
    let allow = broker.config.allow_anonymous;
    match (&auth.passwords, &c.username) {
        (Some(_), Some(user)) => {
            let (user, password) = (user.clone(), c.password.clone());
            tokio::task::spawn_blocking(move || auth.authenticate(allow, Some(&user), password.as_deref()))
                .await
                .unwrap_or(Err(ReasonCode::UnspecifiedError))
        }
        (_, user) => auth.authenticate(allow, user.as_deref(), c.password.as_deref()),
    }
}

/// CONNECT checks: limits, authentication, client identifier, keep alive (3.1.1 section 3.1.4, 5.0 section 3.1.4).
/// `credentials` is the password file's answer, from [`check_credentials`].
fn accept(broker: &Broker, c: &Connect, credentials: Result<(), ReasonCode>) -> Result<Accepted, ReasonCode> {
    let config = &broker.config;
    if broker.is_shutting_down() {
        return Err(ReasonCode::ServerUnavailable);
    }
    if let Some(method) = &c.properties.authentication_method
        && broker.auth_method(method).is_none()
    {
        // MQTT 5.0 section 4.12: a method the server does not offer.
        tracing::debug!(client_id = %c.client_id, %method, "unsupported authentication method");
        return Err(ReasonCode::BadAuthenticationMethod);
    }

    let v5 = c.protocol.is_v5();
    if let Some(will) = &c.will
        && will.qos > config.max_qos
    {
        // [MQTT-3.2.2-12]
        return Err(ReasonCode::QoSNotSupported);
    }
    credentials.map_err(|code| {
        // 3.x clients hear "not authorised" (return code 5) for every refusal, as Mosquitto answers them.
        if v5 { code } else { ReasonCode::NotAuthorized }
    })?;
    let (client_id, assigned) = if c.client_id.is_empty() {
        // [MQTT-3.1.3-7] 3.1 requires an identifier; [MQTT-3.1.3-8] 3.1.1 only with a clean session.
        if c.protocol == ProtocolVersion::V31
            || (c.protocol == ProtocolVersion::V311 && !c.clean_start)
            || !config.allow_zero_length_clientid
        {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        (assign_client_id(broker), true)
    } else {
        // A copy, not a slice: a slice would keep the whole first read buffer alive as long as the session.
        (ByteString::from(&*c.client_id), false)
    };
    if !client_id.starts_with(&*config.clientid_prefixes) {
        tracing::debug!(%client_id, prefix = %config.clientid_prefixes, "client id without the required prefix");
        return Err(ReasonCode::NotAuthorized);
    }
    let client_id = match (&c.username, config.use_username_as_clientid) {
        (_, false) => client_id,
        (Some(user), true) => ByteString::from(&**user),
        (None, true) => {
            tracing::debug!(%client_id, "no user name to take as the client id");
            return Err(ReasonCode::NotAuthorized);
        }
    };
    let mut keep_alive = c.keep_alive;
    let mut server_keep_alive = None;
    if keep_alive > config.max_keepalive || (keep_alive == 0 && config.max_keepalive < u16::MAX) {
        if v5 {
            keep_alive = config.max_keepalive;
            server_keep_alive = Some(keep_alive);
        } else if keep_alive > config.max_keepalive {
            // Mosquitto's answer to a 3.x client over max_keepalive: identifier rejected.
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
    }
    if let Some(will) = &c.will {
        // [MQTT-3.2.2-13]: with Retain Available 0, a will that asks to be retained refuses the connection.
        if v5 && will.retain && !config.retain_available {
            return Err(ReasonCode::RetainNotSupported);
        }
        // As Mosquitto: a will the client may not publish refuses the connection, rather than being dropped later
        // where nobody sees it.
        if !broker.may_publish(c.username.as_deref(), &client_id, &will.topic) {
            Stats::add(&broker.stats.acl_denied, 1);
            tracing::debug!(%client_id, topic = %will.topic, "will topic refused by the ACL");
            return Err(ReasonCode::NotAuthorized);
        }
    }
    let persistent = if v5 { c.properties.session_expiry_interval.unwrap_or(0) > 0 } else { !c.clean_start };
    Ok(Accepted { client_id, assigned, persistent, keep_alive, server_keep_alive })
}

fn assign_client_id(broker: &Broker) -> ByteString {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(broker.started.elapsed().as_nanos());
    ByteString::from(format!("{}{:016x}", broker.config.auto_id_prefix, h.finish()))
}

/// A connection's `max_publish_rate`: its bucket, and, when it stopped the handling of a read, how long until the
/// next PUBLISH may go. Boxed in `Conn`: most connections have no limit.
struct Throttle {
    bucket: crate::stats::Bucket,
    wait: Option<Duration>,
}

/// The enhanced authentication a client connected with (MQTT 5.0 section 4.12), and a re-authentication of it in
/// progress.
struct Enhanced {
    name: ByteString,
    method: Arc<dyn crate::auth::AuthMethod>,
    exchange: Option<Box<dyn crate::auth::AuthExchange>>,
}

/// One attached connection's packet handling.
struct Conn {
    broker: Arc<Broker>,
    session: Arc<crate::broker::SessionHandle>,
    connection_id: u64,
    version: ProtocolVersion,
    persistent: bool,
    will: Option<Box<skein_codec::Will>>,
    /// The user name it connected with, for the ACL (the client id is the session's).
    username: Option<Box<str>>,
    /// The client's topic aliases (MQTT 5.0 section 3.3.2.3.4), index alias - 1; grown when first set.
    aliases: Box<[Option<ByteString>]>,
    /// The enhanced authentication method the client connected with, and a re-authentication in progress.
    auth_method: Option<Box<Enhanced>>,
    publish_rate: Option<Box<Throttle>>,
}

/// What handling one read's packets produced, applied together after one flush.
#[derive(Default)]
struct Batch {
    acks: BytesMut,
    retained: Vec<crate::session::Outgoing>,
    durable: bool,
    /// Other nodes' acceptance of forwarded QoS 1/2 messages.
    accepted: crate::cluster::Acceptance,
    /// What else forwarding waits for (a retained change's commit).
    remote: Vec<crate::cluster::Accepted>,
}

impl Batch {
    /// True if committing it waits: for the store, for other nodes, or to deliver retained messages.
    fn waits(&self) -> bool {
        self.durable || !self.accepted.is_empty() || !self.remote.is_empty() || !self.retained.is_empty()
    }
}

/// A read's batch on its way to being acknowledged: resolves, with the batch, once what it waits for is done.
type Commit = std::pin::Pin<Box<dyn std::future::Future<Output = Batch> + Send>>;

/// Commits not yet ended, oldest first; allocated when the first has to wait (most connections never do).
type Commits = Option<Box<std::collections::VecDeque<Commit>>>;

/// Reads whose acknowledgements may wait at once (for the store, for other nodes); past this, reading waits for
/// the oldest. A client keeps far fewer unacknowledged QoS 1/2 messages than this anyway (Receive Maximum).
const MAX_COMMITS: usize = 64;

/// The oldest commit's end (only called while there is one). A plain poll, not an async fn: its state would be
/// part of every connection's task.
fn next_commit(commits: &mut Commits) -> impl std::future::Future<Output = Batch> + use<'_> {
    std::future::poll_fn(move |cx| {
        let Some(queue) = commits.as_mut() else { return std::task::Poll::Pending };
        let Some(front) = queue.front_mut() else { return std::task::Poll::Pending };
        let batch = std::task::ready!(front.as_mut().poll(cx));
        queue.pop_front();
        std::task::Poll::Ready(batch)
    })
}

/// The largest packet read from a client.
pub(crate) fn max_packet(config: &crate::BrokerConfig) -> usize {
    match config.max_packet_size {
        0 => MAX_PACKET_SIZE,
        n => n,
    }
}

/// [MQTT-3.1.2-24]: a client is closed after one and a half times its keep alive without a packet.
fn keep_alive_period(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// When the connection's timer next looks: at the keep-alive deadline, or after another `park_after` if that is
/// sooner. Computed when needed, not kept: what the packet loop keeps is in every connection's task.
fn next_due(
    keep_alive: u16,
    park_after: Option<Duration>,
    last_read: tokio::time::Instant,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    let keep_alive = keep_alive_period(keep_alive).map(|p| last_read + p);
    let park = park_after.map(|a| now + a);
    match (keep_alive, park) {
        (Some(k), Some(p)) => k.min(p),
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => now,
    }
}

/// True while a commit has not ended.
fn waiting(commits: &Commits) -> bool {
    commits.as_ref().is_some_and(|q| !q.is_empty())
}

impl Client {
    /// Reads and handles packets to the end of the connection, and writes what the session has for the client as it
    /// comes. A read whose acknowledgements must wait (for the store, or for the nodes a message went to) does not
    /// hold up the next read: its commit joins `commits`, which end in order, so that acknowledgements still leave in
    /// the order their packets came [MQTT-4.6.0-2]; while any waits, every later read's acknowledgements queue behind
    /// it. What was read before the end is acknowledged before this returns (as a client that is still there
    /// expects); the teardown writes it.
    ///
    /// A method of `Client`, not of `Conn` with the other parts as arguments: arguments are kept in every
    /// connection's task, one pointer each.
    async fn run<R: Source, W: AsyncWrite + Unpin>(
        &mut self,
        reader: &mut R,
        out: &mut Out<W>,
        pending: &mut BytesMut,
        parks: bool,
    ) -> Close {
        // [MQTT-3.1.2-24]: one and a half times the keep alive. One timer for the connection's life, moved on only
        // when it fires early (bytes came since it was set), not for every read. Where the connection can park,
        // the same timer looks every `idle_park_after` for a turn with nothing read or sent (`Close::Idle`).
        let mut sent_seen = out.sent;
        let timer = tokio::time::sleep_until(next_due(
            self.keep_alive,
            self.park_after(parks),
            self.last_read,
            tokio::time::Instant::now(),
        ));
        tokio::pin!(timer);
        let mut commits: Commits = None;
        // A finished commit delivered retained messages that must be stored before they are sent.
        let mut flush_first = false;
        // A shutdown that began before this connection's session was attached sent it no kick.
        if self.conn.broker.is_shutting_down() {
            return Close::Shutdown;
        }
        let close = 'conn: loop {
            if std::mem::take(&mut flush_first) {
                Box::pin(self.conn.flush_then_wake(&self.waker)).await;
            }
            if !pending.is_empty() {
                // In a block: a batch in scope across the waits below would sit in every connection's task.
                let outcome = {
                    let mut batch = Batch::default();
                    self.conn.broker.cluster().begin_batch();
                    let outcome = self.conn.handle_all(pending, max_packet(&self.conn.broker.config), &mut batch);
                    self.conn.broker.cluster().end_batch(&mut batch.accepted);
                    if batch.waits() || (waiting(&commits) && !batch.acks.is_empty()) {
                        commits.get_or_insert_default().push_back(self.conn.commit(batch));
                    } else {
                        // Also when there are no acknowledgements: an acknowledgement from the client may have
                        // opened the window for queued messages.
                        self.conn.queue_acks(&batch.acks, Some(&mut *out));
                    }
                    outcome
                };
                if let Some(close) = outcome {
                    break close;
                }
                if commits.as_ref().is_some_and(|q| q.len() >= MAX_COMMITS) {
                    let batch = next_commit(&mut commits).await;
                    flush_first = self.conn.finish(batch, out);
                    continue;
                }
                // Over its publish rate: the rest of this read waits, and nothing more is read meanwhile (TCP holds
                // what the client sends on); what is sent to the client goes on.
                if let Some(wait) = self.conn.publish_rate.as_mut().and_then(|t| t.wait.take()) {
                    // Boxed, as this is rare: an inline timer would be part of every connection's task.
                    let mut sleep = Box::pin(tokio::time::sleep(wait));
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            k = std::future::poll_fn(|cx| self.waker.poll_kicked(cx)) => break 'conn kicked_close(k),
                            r = std::future::poll_fn(|cx| self.conn.poll_out(out, &self.waker, cx)) => {
                                if r.is_err() {
                                    break 'conn Close::Closed;
                                }
                            }
                        }
                    }
                    continue;
                }
            }
            // Backpressure: a client that does not read its acknowledgements stops being read, until they are
            // written down to the bound (they leave the session only through `poll_out`, in this task).
            if lock(&self.conn.session.state).control.len() > CONTROL_LIMIT {
                let drained = std::future::poll_fn(|cx| {
                    if let std::task::Poll::Ready(r) = self.conn.poll_out(out, &self.waker, cx) {
                        return std::task::Poll::Ready(r);
                    }
                    match lock(&self.conn.session.state).control.len() > CONTROL_LIMIT {
                        true => std::task::Poll::Pending,
                        false => std::task::Poll::Ready(Ok(())),
                    }
                });
                tokio::select! {
                    r = drained => if r.is_err() {
                        break 'conn Close::Closed;
                    },
                    k = std::future::poll_fn(|cx| self.waker.poll_kicked(cx)) => break 'conn kicked_close(k),
                }
            }
            if pending.is_empty() {
                // Idle: give the buffers back and wait for bytes without one.
                if pending.capacity() > 0 {
                    *pending = BytesMut::new();
                }
                if !out.busy() && out.outbox.buf.capacity() > 0 {
                    out.outbox.buf = BytesMut::new();
                }
                tokio::select! {
                    biased;
                    k = std::future::poll_fn(|cx| self.waker.poll_kicked(cx)) => break kicked_close(k),
                    batch = next_commit(&mut commits), if waiting(&commits) => {
                        flush_first = self.conn.finish(batch, out);
                        continue;
                    }
                    r = std::future::poll_fn(|cx| self.conn.poll_out(out, &self.waker, cx)) => if r.is_err() {
                        break Close::Closed;
                    },
                    r = std::future::poll_fn(|cx| reader.poll_ready(cx)) => if r.is_err() {
                        break Close::Closed;
                    },
                    () = &mut timer, if self.timed(parks) => {
                        // Quiet: nothing sent since the timer last looked, nothing read or waiting now.
                        let quiet = std::mem::replace(&mut sent_seen, out.sent) == out.sent
                            && !waiting(&commits)
                            && !out.busy();
                        if let Some(close) = self.timer_fired(timer.as_mut(), parks, quiet) {
                            break close;
                        }
                        continue;
                    }
                }
            }
            pending.reserve(read_room(pending));
            tokio::select! {
                biased;
                k = std::future::poll_fn(|cx| self.waker.poll_kicked(cx)) => break kicked_close(k),
                batch = next_commit(&mut commits), if waiting(&commits) => flush_first = self.conn.finish(batch, out),
                r = std::future::poll_fn(|cx| self.conn.poll_out(out, &self.waker, cx)) => if r.is_err() {
                    break Close::Closed;
                },
                r = reader.read_buf(pending) => match r {
                    Ok(0) | Err(_) => break Close::Closed,
                    Ok(n) => {
                        self.last_read = tokio::time::Instant::now();
                        Stats::add(&self.conn.broker.stats.bytes_received, n as u64);
                    }
                },
                () = &mut timer, if self.timed(parks) => {
                    if let Some(close) = self.timer_fired(timer.as_mut(), parks, false) {
                        break close;
                    }
                }
            }
        };
        if flush_first || waiting(&commits) {
            Box::pin(async {
                if flush_first {
                    let _ = self.conn.broker.flush().await;
                }
                while waiting(&commits) {
                    let batch = next_commit(&mut commits).await;
                    if self.conn.finish(batch, &mut *out) {
                        let _ = self.conn.broker.flush().await;
                    }
                }
            })
            .await;
        }
        close
    }
}

impl Client {
    /// True where the packet loop's timer has something to look for: a keep alive, or the time to park.
    fn timed(&self, parks: bool) -> bool {
        self.keep_alive > 0 || self.park_after(parks).is_some()
    }

    /// The packet loop's timer fired: the keep alive ran out (`KeepAlive`), or the connection has been `quiet` long
    /// enough to park (`Idle`); else the timer is set for its next look.
    fn timer_fired(&self, timer: std::pin::Pin<&mut tokio::time::Sleep>, parks: bool, quiet: bool) -> Option<Close> {
        let now = tokio::time::Instant::now();
        if keep_alive_period(self.keep_alive).is_some_and(|p| self.last_read + p <= now) {
            return Some(Close::KeepAlive);
        }
        let park_after = self.park_after(parks);
        if quiet && park_after.is_some_and(|after| self.last_read + after <= now) {
            return Some(Close::Idle);
        }
        timer.reset(next_due(self.keep_alive, park_after, self.last_read, now));
        None
    }
}

impl Client {
    /// How long the packet loop waits idle before it parks, if it does: `idle_park_after`, and the first time at
    /// most `FIRST_PARK_AFTER`. A connection quiet since it connected is most likely one of a fleet of idle devices
    /// (a reconnect storm after a restart brings them all at once), and parks before their tasks add up; one that
    /// has parked and been woken has shown it is busier, and pays the cost of parking (about 40 µs of CPU a
    /// round) at most once more per `idle_park_after`.
    fn park_after(&self, parks: bool) -> Option<Duration> {
        let after = self.conn.broker.config.idle_park_after.filter(|_| parks)?;
        Some(if self.has_parked { after } else { after.min(FIRST_PARK_AFTER) })
    }
}

/// The longest a connection waits idle before it parks the first time (see `Client::park_after`).
pub const FIRST_PARK_AFTER: Duration = Duration::from_secs(2);

impl Conn {
    /// The sending side, polled beside every other wait of the packet loop: writes what is buffered, then moves in
    /// what the session has for this connection, and when there is nothing, waits for the session to wake it.
    /// Pending while it can go no further; ready only with a write's error.
    fn poll_out<W: AsyncWrite + Unpin>(
        &self,
        out: &mut Out<W>,
        waker: &crate::session::Signal,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            if out.busy() {
                std::task::ready!(out.poll_send(cx))?;
            } else {
                std::task::ready!(waker.poll(cx));
            }
            self.fill(out);
        }
    }

    /// Moves what the session has for this connection into the send buffer, if the buffer has been written; true if
    /// it put anything there.
    fn fill<W>(&self, out: &mut Out<W>) -> bool {
        if !out.outbox.is_empty() {
            return false;
        }
        let state = lock(&self.session.state);
        if state.connection_id != self.connection_id {
            return false;
        }
        self.take_pending(state, out)
    }

    /// `fill` with the session's state already locked (and this connection's).
    fn take_pending<W>(&self, mut state: std::sync::MutexGuard<'_, crate::session::Session>, out: &mut Out<W>) -> bool {
        // Allocates only for a persistent session's store updates.
        let mut updates = Vec::new();
        let start = out.outbox.len();
        let written = state.write_pending_to(&mut out.outbox, &mut updates);
        drop(state);
        if !updates.is_empty() {
            self.broker.apply_store_updates(&self.session.client_id, &updates);
        }
        if out.outbox.is_empty() {
            return false;
        }
        out.sent = out.sent.wrapping_add(1);
        Stats::add(&self.broker.stats.publish_sent, written.publishes as u64);
        Stats::add(&self.broker.stats.publish_bytes_sent, written.payload_bytes);
        Stats::add(&self.broker.stats.messages_sent, written.packets);
        Stats::add(&self.broker.stats.bytes_sent, (out.outbox.len() - start) as u64);
        true
    }

    /// Waits until the batch's writes are durable and the other nodes have what it forwarded; `finish` then queues
    /// its acknowledgements: no PUBACK goes out before what it acknowledges is stored.
    fn commit(&self, mut batch: Batch) -> Commit {
        let broker = self.broker.clone();
        Box::pin(async move {
            if batch.durable
                && let Err(e) = broker.flush().await
            {
                tracing::error!(error = %e, "data store flush failed");
            }
            std::mem::take(&mut batch.accepted).wait().await;
            for accepted in std::mem::take(&mut batch.remote) {
                accepted.await;
            }
            batch
        })
    }

    /// A committed batch: its acknowledgements queued (and sent on), then its retained messages delivered. True if
    /// those must be made durable before they are sent (`flush_then_wake`).
    fn finish<W>(&self, batch: Batch, out: &mut Out<W>) -> bool {
        if !batch.retained.is_empty() {
            self.queue_acks(&batch.acks, None::<&mut Out<W>>);
            if self.broker.deliver(&self.session, batch.retained) {
                return true;
            }
            self.fill(out);
            return false;
        }
        self.queue_acks(&batch.acks, Some(out));
        false
    }

    /// Called boxed: the rare wait would otherwise be part of every connection's task.
    async fn flush_then_wake(&self, waker: &crate::session::Signal) {
        let _ = self.broker.flush().await;
        waker.notify();
    }

    /// Queues acknowledgements for the client, and with `out`, moves them (and whatever else the session has) into
    /// the send buffer if it has been written, under the same lock.
    fn queue_acks<W>(&self, acks: &[u8], out: Option<&mut Out<W>>) {
        if acks.is_empty() && out.is_none() {
            return;
        }
        let mut state = lock(&self.session.state);
        if state.connection_id != self.connection_id {
            return;
        }
        state.control.extend_from_slice(acks);
        if let Some(out) = out.filter(|o| o.outbox.is_empty()) {
            self.take_pending(state, out);
        }
    }

    fn handle_all(&mut self, buf: &mut BytesMut, max_packet: usize, batch: &mut Batch) -> Option<Close> {
        loop {
            // A PUBLISH next, and none left in the client's rate: stop here until there is (see `run`).
            if let Some(throttle) = self.publish_rate.as_mut()
                && buf.first().is_some_and(|b| b >> 4 == 3)
                && let Err(wait) = throttle.bucket.take()
            {
                throttle.wait = Some(wait);
                return None;
            }
            match decode(buf, self.version, max_packet) {
                Ok(Some(packet)) => {
                    Stats::add(&self.broker.stats.messages_received, 1);
                    if let Some(close) = self.handle(packet, batch) {
                        return Some(close);
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::debug!(client_id = %self.session.client_id, error = %e, "malformed packet");
                    return Some(Close::Violation(e.reason_code()));
                }
            }
        }
    }

    /// Runs one acknowledgement through the session and applies what it changed in the store.
    fn acked(&self, f: impl FnOnce(&mut crate::session::Session, &mut Vec<crate::session::StoreUpdate>)) {
        let mut updates = Vec::new();
        f(&mut lock(&self.session.state), &mut updates);
        self.broker.apply_store_updates(&self.session.client_id, &updates);
    }

    fn ack(&self, batch: &mut Batch, packet: Packet) {
        let _ = packet.encode(self.version, &mut batch.acks);
    }

    fn handle(&mut self, packet: Packet, batch: &mut Batch) -> Option<Close> {
        let v5 = self.version.is_v5();
        match packet {
            Packet::Publish(p) => return self.publish(p, batch),
            // The client's side of our QoS 1/2 deliveries; what finishes leaves the store too.
            Packet::PubAck(a) => self.acked(|s, u| {
                s.on_puback(a.packet_id, u);
            }),
            Packet::PubRec(a) => self.acked(|s, u| s.on_pubrec(a.packet_id, a.reason_code, u)),
            Packet::PubComp(a) => self.acked(|s, u| {
                s.on_pubcomp(a.packet_id, u);
            }),
            Packet::PubRel(a) => {
                let known = lock(&self.session.state).on_pubrel(a.packet_id);
                let mut ack = Ack::new(a.packet_id);
                if !known && v5 {
                    ack.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.ack(batch, Packet::PubComp(ack));
            }
            Packet::Subscribe(mut s) => {
                // Granted at most max_qos (MQTT 5.0 section 3.9.3: the server may grant a lower QoS).
                let max_qos = self.broker.config.max_qos;
                for (_, o) in s.filters.iter_mut() {
                    o.qos = o.qos.min(max_qos);
                }
                if v5
                    && s.filters.iter().any(|(f, o)| {
                        o.no_local && matches!(skein_codec::topic::parse_filter(f), Ok(Filter::Shared { .. }))
                    })
                {
                    // [MQTT-3.8.3-4]
                    return Some(Close::Violation(ReasonCode::ProtocolError));
                }
                let id = s.properties.subscription_identifiers.first().copied();
                let (reason_codes, retained, durable) = self.broker.subscribe(&self.session, &s.filters, id);
                batch.durable |= durable;
                batch.retained.extend(retained);
                // In a cluster: the SUBACK once every node routes here what this node's subscribes asked for.
                batch.remote.extend(self.broker.cluster().routes_settled());
                self.ack(
                    batch,
                    Packet::SubAck(SubAck { packet_id: s.packet_id, properties: Properties::default(), reason_codes }),
                );
            }
            Packet::Unsubscribe(u) => {
                let (reason_codes, durable) = self.broker.unsubscribe(&self.session, &u.filters);
                batch.durable |= durable;
                self.ack(
                    batch,
                    Packet::UnsubAck(UnsubAck {
                        packet_id: u.packet_id,
                        properties: Properties::default(),
                        reason_codes,
                    }),
                );
            }
            Packet::PingReq => self.ack(batch, Packet::PingResp),
            Packet::Auth(a) if v5 => return self.reauthenticate(a, batch),
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    // [MQTT-3.14.2-2]: a session that was to end with the connection cannot be extended here.
                    if !self.persistent && expiry > 0 {
                        return Some(Close::Violation(ReasonCode::ProtocolError));
                    }
                    let mut state = lock(&self.session.state);
                    state.persistent = expiry > 0;
                    state.expiry = expiry;
                }
                return Some(Close::Disconnect { send_will: d.reason_code == ReasonCode::DisconnectWithWillMessage });
            }
            // A second CONNECT [MQTT-3.1.0-2], AUTH without an authentication method, or a server-to-client packet.
            other => {
                tracing::debug!(client_id = %self.session.client_id, packet = %other.packet_type(), "protocol violation");
                return Some(Close::Violation(ReasonCode::ProtocolError));
            }
        }
        None
    }

    /// Re-authentication (MQTT 5.0 section 4.12.1): AUTH 0x19 starts it, AUTH 0x18 carries it on, with the method
    /// the connection was authenticated by; success is AUTH 0x00, failure DISCONNECT 0x87.
    fn reauthenticate(&mut self, a: skein_codec::Auth, batch: &mut Batch) -> Option<Close> {
        use crate::auth::AuthStep;
        let Some(auth) = self.auth_method.as_deref_mut() else {
            // [MQTT-4.12.0-6]: no AUTH from a client that did not connect with a method.
            return Some(Close::Violation(ReasonCode::ProtocolError));
        };
        let name = auth.name.clone();
        if a.properties.authentication_method.as_ref() != Some(&name) {
            return Some(Close::Violation(ReasonCode::ProtocolError));
        }
        let exchange = match (a.reason_code, auth.exchange.take()) {
            (ReasonCode::ReAuthenticate, _) => auth.method.start(&self.session.client_id),
            (ReasonCode::ContinueAuthentication, Some(e)) => e,
            _ => return Some(Close::Violation(ReasonCode::ProtocolError)),
        };
        let mut exchange = exchange;
        match exchange.step(a.properties.authentication_data.as_deref()) {
            AuthStep::Continue(data) => {
                auth.exchange = Some(exchange);
                self.ack(batch, auth_packet(ReasonCode::ContinueAuthentication, &name, data));
            }
            AuthStep::Success { data, .. } => self.ack(batch, auth_packet(ReasonCode::Success, &name, data)),
            AuthStep::Failure => {
                tracing::info!(client_id = %self.session.client_id, method = %name, "re-authentication failed");
                return Some(Close::Violation(ReasonCode::NotAuthorized));
            }
        }
        None
    }

    fn publish(&mut self, mut p: Publish, batch: &mut Batch) -> Option<Close> {
        let broker = &*self.broker;
        let v5 = self.version.is_v5();
        Stats::add(&broker.stats.publish_received, 1);
        Stats::add(&broker.stats.publish_bytes_received, p.payload.len() as u64);
        if let Some(alias) = p.properties.topic_alias {
            // [MQTT-3.3.2-9]: 0 and anything above our Topic Alias Maximum are invalid.
            let slot = usize::from(alias);
            if alias == 0 || alias > broker.config.max_topic_alias {
                return Some(Close::Violation(ReasonCode::TopicAliasInvalid));
            }
            if p.topic.is_empty() {
                // An alias the client has not set on this connection is a protocol error (section 3.3.2.3.4).
                match self.aliases.get(slot - 1).cloned().flatten() {
                    Some(topic) => p.topic = topic,
                    None => return Some(Close::Violation(ReasonCode::ProtocolError)),
                }
            } else {
                if self.aliases.len() < slot {
                    let mut grown = std::mem::take(&mut self.aliases).into_vec();
                    grown.resize(slot, None);
                    self.aliases = grown.into_boxed_slice();
                }
                // A copy: a slice would keep this read's buffer alive as long as the alias.
                self.aliases[slot - 1] = Some(ByteString::from(&*p.topic));
            }
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // [MQTT-3.3.4-6]
            return Some(Close::Violation(ReasonCode::ProtocolError));
        }
        if p.retain && !broker.config.retain_available && v5 {
            return Some(Close::Violation(ReasonCode::RetainNotSupported));
        }
        if p.qos > broker.config.max_qos {
            // [MQTT-3.2.2-11]: above the Maximum QoS we announced; a 3.x client is closed, as Mosquitto does.
            return Some(Close::Violation(ReasonCode::QoSNotSupported));
        }
        let mut refusal = None;
        if broker.config.message_size_limit != 0 && p.payload.len() > broker.config.message_size_limit {
            Stats::add(&broker.stats.publish_too_large, 1);
            tracing::debug!(client_id = %self.session.client_id, size = p.payload.len(), "publish over message_size_limit dropped");
            refusal = Some(ReasonCode::ImplementationSpecificError);
        } else if p.retain && broker.retained_too_large(&p.topic, p.payload.len()) {
            Stats::add(&broker.stats.publish_too_large, 1);
            tracing::debug!(client_id = %self.session.client_id, size = p.payload.len(), "retained publish over cluster_retain_max_size refused");
            refusal = Some(ReasonCode::QuotaExceeded);
        } else if v5 && p.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&p.payload).is_err() {
            // MQTT 5.0 section 3.3.2.3.2: a payload that says it is UTF-8 and is not.
            refusal = Some(ReasonCode::PayloadFormatInvalid);
        } else if broker.config.too_long(&p.topic) || broker.config.too_many_levels(&p.topic) {
            tracing::debug!(client_id = %self.session.client_id, "publish refused: topic too long or too many levels");
            refusal = Some(ReasonCode::TopicNameInvalid);
        } else if !broker.may_publish(self.username.as_deref(), &self.session.client_id, &p.topic) {
            // Refused by the ACL, or a `$SYS`/`$share` topic: MQTT 5.0 clients are told (0x87); 3.x clients get
            // their usual acknowledgement and the message goes nowhere, as with Mosquitto.
            Stats::add(&broker.stats.acl_denied, 1);
            tracing::debug!(client_id = %self.session.client_id, topic = %p.topic, "publish refused by the ACL");
            refusal = Some(ReasonCode::NotAuthorized);
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        if qos == QoS::ExactlyOnce {
            let limit = usize::from(broker.config.receive_maximum());
            match lock(&self.session.state).on_incoming_qos2(packet_id, limit) {
                IncomingQos2::New => {}
                IncomingQos2::Repeat => {
                    // A repeat before PUBREL: acknowledge again, deliver nothing [MQTT-4.3.3-10].
                    self.ack(batch, Packet::PubRec(Ack::new(packet_id)));
                    return None;
                }
                // More unreleased QoS 2 messages than our Receive Maximum (MQTT 5.0 section 3.3.4); a 3.x client is
                // closed, as Mosquitto does past max_inflight_messages.
                IncomingQos2::OverLimit => return Some(Close::Violation(ReasonCode::ReceiveMaximumExceeded)),
            }
        }
        let mut reason = ReasonCode::Success;
        match refusal {
            Some(code) => {
                if qos == QoS::AtMostOnce && code == ReasonCode::PayloadFormatInvalid {
                    return Some(Close::Violation(code));
                }
                reason = code;
                if qos == QoS::ExactlyOnce {
                    // An error PUBREC ends the exchange: the identifier is free again.
                    lock(&self.session.state).on_pubrel(packet_id);
                }
            }
            None => {
                let message = Message::from_publish(p, Some(self.session.client_id.clone()));
                let routed = broker.publish_counted(message, &mut batch.accepted);
                batch.durable |= routed.durable;
                if routed.delivered == 0 && !routed.elsewhere && routed.remote.is_none() && v5 {
                    reason = ReasonCode::NoMatchingSubscribers;
                }
                if let Some(remote) = routed.remote
                    && qos != QoS::AtMostOnce
                {
                    batch.remote.push(remote);
                }
            }
        }
        if !v5 {
            reason = ReasonCode::Success;
        }
        let ack = Ack { packet_id, reason_code: reason, properties: Properties::default() };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack(batch, Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.ack(batch, Packet::PubRec(ack)),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{READ_CHUNK, read_room};
    use bytes::BytesMut;

    /// A PUBLISH's fixed header claiming `remaining` bytes, followed by `have` of them.
    fn partial(remaining: usize, have: usize) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0x30]);
        skein_codec::put_varint(&mut b, remaining);
        b.extend_from_slice(&vec![0; have]);
        b
    }

    #[test]
    fn the_rest_of_a_large_packet_is_made_room_for_up_to_four_times_what_came() {
        assert_eq!(read_room(&BytesMut::new()), READ_CHUNK, "nothing pending");
        assert_eq!(read_room(&partial(100, 10)), READ_CHUNK, "a small packet");
        // 64 KiB of payload, 16 KiB of it here: the other 48 KiB at once.
        let p = partial(65_536, 16_384);
        assert_eq!(read_room(&p), 65_536 - 16_384);
        // 200 MiB claimed, 20 KB here: room for 4 times what came, not for the claim.
        let p = partial(200 << 20, 20_000);
        assert_eq!(read_room(&p), 4 * p.len());
        // A header alone claims nothing beyond a chunk.
        assert_eq!(read_room(&partial(200 << 20, 0)), READ_CHUNK);
    }
}
