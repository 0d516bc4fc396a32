//! MQTT over WebSocket (MQTT 5.0 section 6): the handshake on path `/mqtt` with subprotocol `mqtt` (or the older
//! `mqttv3.1`), then binary frames carry the byte stream. The adapters here turn a WebSocket into the byte reader and
//! writer the connection driver takes, so a WebSocket client is served exactly like a TCP one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The subprotocols a client may ask for, in our order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Completes the WebSocket handshake on `stream` and returns its reading and writing halves. A frame or message
/// may be as large as an MQTT packet of `max_packet` bytes (and never smaller than the WebSocket library's own
/// limits): with the library's 16 MiB frame limit, a larger PUBLISH sent as one frame reset the connection unlogged.
pub async fn accept<S>(stream: S, max_packet: usize) -> Result<(WsReader<S>, WsWriter<S>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The callback's types are tungstenite's own.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != "/mqtt" {
            let mut refusal = ErrorResponse::new(Some("MQTT is served on /mqtt".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        let offered = request.headers().get_all("sec-websocket-protocol");
        let offered: Vec<&str> =
            offered.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).collect();
        // [MQTT-6.0.0-3]: the server selects "mqtt"; a client that names none is served anyway, as browsers and
        // Mosquitto allow.
        if let Some(p) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
            response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(p));
        } else if !offered.is_empty() {
            let mut refusal = ErrorResponse::new(Some("subprotocol mqtt required".into()));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refusal);
        }
        Ok(response)
    };
    let defaults = WebSocketConfig::default();
    // The packet and its fixed header (at most 5 bytes).
    let packet = max_packet.saturating_add(5);
    let config = WebSocketConfig::default()
        .max_frame_size(defaults.max_frame_size.map(|d| d.max(packet)))
        .max_message_size(defaults.max_message_size.map(|d| d.max(packet)));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    let (sink, stream) = ws.split();
    Ok((WsReader { stream, pending: Bytes::new() }, WsWriter { sink }))
}

/// The bytes of a WebSocket's binary messages, as one stream.
pub struct WsReader<S> {
    stream: SplitStream<WebSocketStream<S>>,
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsReader<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.stream).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // [MQTT-6.0.0-1]: MQTT goes in binary frames; anything else closes the connection.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "text frame")));
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

/// Each write goes out as one binary message.
pub struct WsWriter<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsWriter<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.sink).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.sink).start_send(Message::Binary(Bytes::copy_from_slice(data))).map_err(io::Error::other)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sink).poll_flush(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sink).poll_close(cx).map_err(io::Error::other)
    }
}

/// A WebSocket holds whole messages: readiness cannot be told without reading, so it is read as usual.
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> crate::connection::Source for WsReader<S> {
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
