//! Mutual TLS between peers (rustls with the ring provider), done here rather than by tonic so that the files can be
//! replaced while the node runs (a certificate renewed before it expires): every new connection, accepted or made,
//! uses the files as they were last read. Connections already open keep what they started with.
//!
//! Both sides present this node's certificate and check the other's against the cluster CA; a client also checks
//! that the peer's certificate names the address it dialled (DNS name or IP address).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use skein_broker::tls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The PEM files of peer TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// This node's certificate chain, shown to peers both as a server and as a client.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA, which must have signed every peer's certificate.
    pub ca: PathBuf,
}

/// Both sides' configurations, built from one reading of the files.
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl PeerTls {
    /// Reads the files and builds both configurations, or says what is wrong with which file.
    fn load(&self) -> Result<Configs, String> {
        let certs = tls::read_chain(&self.cert)?;
        let key = tls::read_key(&self.key)?;
        let roots = Arc::new(tls::read_roots(&self.ca)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
        let both = |e: rustls::Error| format!("{} and {}: {e}", self.cert.display(), self.key.display());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}; give the PEM certificate of the cluster CA", self.ca.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(both)?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(both)?;
        // gRPC is HTTP/2.
        server.alpn_protocols = vec![b"h2".to_vec()];
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Configs { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// Peer TLS in force: the files, and the configurations new connections use.
pub struct Active {
    files: PeerTls,
    current: RwLock<Configs>,
}

static ACTIVE: OnceLock<Arc<Active>> = OnceLock::new();

/// Turns peer TLS on for this process, with `files` as they are now; an error names the file at fault.
pub fn enable(files: PeerTls) -> Result<Arc<Active>, String> {
    let configs = files.load()?;
    let active = ACTIVE.get_or_init(|| Arc::new(Active { files, current: RwLock::new(configs) }));
    Ok(active.clone())
}

/// Peer TLS, when it is on.
pub fn active() -> Option<&'static Arc<Active>> {
    ACTIVE.get()
}

impl Active {
    fn server(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).server.clone()
    }

    fn client(&self) -> Arc<ClientConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).client.clone()
    }

    /// Reads the files again when they change (see `reload_on_change`).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let paths = vec![self.files.cert.clone(), self.files.key.clone(), self.files.ca.clone()];
        tls::reload_on_change(paths, every, "cluster TLS certificates", || {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = self.files.load()?;
            Ok(())
        })
        .await
    }

    /// The server side of an accepted connection's handshake.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<PeerStream> {
        let tls = tokio_rustls::TlsAcceptor::from(self.server()).accept(tcp).await?;
        Ok(PeerStream(tls))
    }

    /// Connects to `host:port` and makes the client side of the handshake, checking that the peer's certificate
    /// names `host`.
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        // An IPv6 address comes in brackets, as a URI writes it.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        let tcp = TcpStream::connect((bare, port)).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(self.client()).connect(name, tcp).await
    }
}

/// An accepted peer connection, after its handshake.
pub struct PeerStream(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// tonic's connector for peer channels when peer TLS is on: TCP, then the handshake with the files in force now.
#[derive(Clone)]
pub struct Connector(pub Arc<Active>);

type Connecting = Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
            > + Send,
    >,
>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let active = self.0.clone();
        Box::pin(async move {
            let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no host and port in {uri}"));
            let host = uri.host().ok_or_else(bad)?.to_string();
            let port = uri.port_u16().ok_or_else(bad)?;
            Ok(hyper_util::rt::TokioIo::new(active.connect(&host, port).await?))
        })
    }
}
