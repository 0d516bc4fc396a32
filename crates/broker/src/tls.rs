//! TLS for client listeners (rustls with the ring provider, TLS 1.2 and 1.3 only): the server configuration built
//! from PEM files, rebuilt when the files change (connections already open keep theirs), and the client
//! certificate's Common Name for Mosquitto's `use_identity_as_username`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a client CA every client must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// TLS 1.3 only; otherwise 1.2 and 1.3 (Mosquitto `tls_version`, the lowest version taken).
    pub tls13_only: bool,
}

/// A PEM certificate chain, or what is wrong with the file.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}; give a PEM certificate chain", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it; give a PEM certificate chain", path.display()));
    }
    Ok(certs)
}

/// A PEM private key, or what is wrong with the file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: {e}; give the PEM private key of the certificate", path.display()))
}

/// The CA certificates in a PEM file, or what is wrong with it.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))? {
        roots
            .add(c.map_err(|e| format!("{}: {e}", path.display()))?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it; give the PEM certificate of the CA", path.display()));
    }
    Ok(roots)
}

impl TlsFiles {
    /// A server configuration from the files, or what is wrong with them.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let certs = read_chain(&self.cert)?;
        let key = read_key(&self.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        const ALL: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
        let versions = if self.tls13_only { &ALL[..1] } else { ALL };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider)
                    .build()
                    .map_err(|e| format!("{}: {e}; give the PEM certificate of the client CA", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))?;
        Ok(Arc::new(config))
    }

    fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()].into_iter().flatten().cloned().collect()
    }
}

/// Every `every`, when one of `paths` has changed since `reload` last succeeded, calls it again: `what` (certificate
/// files) is then in force for new connections. A file caught half-written fails to load and is read again at the
/// next check; the failure is logged once per change.
pub async fn reload_on_change(
    paths: Vec<PathBuf>,
    every: Duration,
    what: &'static str,
    mut reload: impl FnMut() -> Result<(), String>,
) {
    let stamps = || -> Vec<Option<SystemTime>> {
        paths.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    };
    let mut seen = stamps();
    let mut failed = None;
    loop {
        tokio::time::sleep(every).await;
        let now = stamps();
        if now == seen {
            continue;
        }
        match reload() {
            Ok(()) => {
                seen = now;
                failed = None;
                tracing::info!(cert = %paths[0].display(), "{what} reloaded");
            }
            Err(e) if failed.as_ref() != Some(&now) => {
                failed = Some(now);
                tracing::warn!("{what} changed but do not load (keeping the old ones): {e}");
            }
            Err(_) => {}
        }
    }
}

/// A listener's TLS configuration, replaced when its files change.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloading {
    pub fn new(files: TlsFiles) -> Result<Arc<Reloading>, String> {
        let config = files.load()?;
        Ok(Arc::new(Reloading { files, current: RwLock::new(config) }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again when they change (see `reload_on_change`).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        reload_on_change(self.files.paths(), every, "TLS certificates", || {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = self.files.load()?;
            Ok(())
        })
        .await
    }
}

/// The Common Name of a DER certificate's subject (the last one, if several), as Mosquitto reads it for
/// `use_identity_as_username`.
pub fn common_name(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial, signature, issuer,
    // validity, subject, ... }, ... }
    let (_, cert_body, _) = der(cert)?;
    let (_, mut tbs, _) = der(cert_body)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() && fields.len() < 6 {
        let (tag, _, rest) = der(tbs)?;
        fields.push((tag, &tbs[..tbs.len() - rest.len()]));
        tbs = rest;
    }
    let skip = usize::from(fields.first()?.0 == 0xA0);
    let subject = fields.get(skip + 4)?.1;
    let (_, mut rdns, _) = der(subject)?;
    let mut cn = None;
    while !rdns.is_empty() {
        let (_, set, rest) = der(rdns)?;
        rdns = rest;
        let (_, attribute, _) = der(set)?;
        let (oid_tag, oid, value) = der(attribute)?;
        if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
            let (_, text, _) = der(value)?;
            cn = Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    cn
}

/// One DER element: (tag, contents, what follows).
fn der(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_never_panics_on_garbage() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = common_name(&bytes);
            let _ = common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
        }
    }
}
