//! The remote API over TLS: the daemon's own CA (made on first start, kept in `<data_dir>/tls`,
//! key 0600), a server certificate it signs at every start, client certificates for mutual TLS,
//! and the accept loop with its limits (handshake and header timeouts, header size, connections
//! per address and identity: `limits.rs`).

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The DNS name every server certificate carries. Clients that pinned the daemon's CA verify
/// against this name, whatever address they connect to (an IP, a NAT'd name).
pub const SERVER_NAME: &str = "vessel";

/// How long a client may take for the TLS handshake, and then for a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body (at most 64 KiB): a client that trickles
/// its body is cut off instead of holding a connection slot.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The read buffer bounds the request line plus headers (hyper's minimum is 8 KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Open TLS connections at once; more wait in the kernel's accept queue. Never reached in
/// practice: connections before sign-in and signed-in ones have limits of their own that add
/// up to less (`limits.rs`), so new sign-ins always find room.
const MAX_CONNECTIONS: usize =
    crate::access::limits::MAX_PENDING + crate::access::limits::MAX_SIGNED_IN + 64;

/// The daemon's CA and the server configuration built on it.
pub struct TlsMaterial {
    pub server_config: Arc<ServerConfig>,
    /// The CA certificate (PEM): what clients pin.
    pub ca_pem: String,
    /// SHA-256 of the CA certificate (DER), hex with colons: what `vessel remote add` shows.
    pub ca_fingerprint: String,
    ca_key: KeyPair,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

/// A client certificate and its key, issued to a user.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate (plain hex): how the daemon recognizes it.
    pub fingerprint: String,
}

/// SHA-256 of a DER certificate, plain lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fingerprint as people compare them: `AB:CD:...`.
pub fn pretty_fingerprint(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

/// The CA's parameters. Built the same way every time, so that a CA loaded from its key signs
/// certificates whose issuer name matches the CA certificate written at first start.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Vessel");
    dn.push(DnType::CommonName, "Vessel daemon CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

impl TlsMaterial {
    /// Loads the CA from `dir` (creating it on first start) and signs a fresh server
    /// certificate for `names` (plus `vessel`, `localhost` and the loopback addresses).
    pub fn load_or_create(dir: &Path, names: &[String]) -> anyhow::Result<TlsMaterial> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        if !key_path.exists() {
            let key = KeyPair::generate().context("cannot generate the CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("cannot make the CA")?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_public(&cert_path, cert.pem().as_bytes())?;
            tracing::info!(dir = %dir.display(), "made the daemon's TLS certificate authority");
        }
        let key_pem = read_private(&key_path)?;
        let ca_key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        let ca_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let ca_der = pem_certificate(&ca_pem)
            .with_context(|| format!("{} holds no PEM certificate", cert_path.display()))?;
        let server_config = Arc::new(server_config_for(&ca_key, ca_der.clone(), names)?);
        Ok(TlsMaterial {
            server_config,
            ca_fingerprint: pretty_fingerprint(&fingerprint(&ca_der)),
            ca_pem,
            ca_key,
        })
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(ca_params(), &self.ca_key)
    }

    /// A client certificate for `user`, signed by the daemon's CA, valid for `days`.
    pub fn issue_client_cert(&self, user: &str, days: u32) -> anyhow::Result<ClientCert> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time_now_days();
        let (y, m, d) = civil_date(now - 1);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = civil_date(now + i64::from(days.max(1)));
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let key = KeyPair::generate().context("cannot generate a client key")?;
        let cert = params
            .signed_by(&key, &self.issuer())
            .context("cannot sign the client certificate")?;
        Ok(ClientCert {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn server_config_for(
    ca_key: &KeyPair,
    ca_der: CertificateDer<'static>,
    names: &[String],
) -> anyhow::Result<ServerConfig> {
    let mut sans = vec![SERVER_NAME.to_string(), "localhost".into()];
    sans.extend(names.iter().cloned());
    let mut params = CertificateParams::new(sans).context("invalid server name")?;
    for ip in ["127.0.0.1", "::1"] {
        params
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse().expect("loopback address")));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "Vessel daemon");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate().context("cannot generate the server key")?;
    let cert = params
        .signed_by(&key, &Issuer::new(ca_params(), ca_key))
        .context("cannot sign the server certificate")?;
    let chain = vec![cert.der().clone(), ca_der.clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(ca_der)?;
    // Client certificates are a second way in; a client without one signs in with a token.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

fn time_now_days() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / 86_400) as i64
}

/// Days since the Unix epoch to a date (Howard Hinnant's civil-from-days).
fn civil_date(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file(path, bytes, 0o644)
}

/// Writes a new file under a temporary name with its final mode from the start, then renames
/// it into place, so that no reader ever sees a partial or over-readable key.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let temp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot create {}", path.display()))
}

fn read_private(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable by group or others (mode {:o}); run chmod 600 on it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Who is on the other end of a request; every listener inserts one into each request.
#[derive(Debug, Clone)]
pub enum Peer {
    /// The unix socket: root or the socket's group.
    Unix,
    /// A TLS client, with the SHA-256 of its client certificate if it showed one.
    Tls {
        addr: SocketAddr,
        client_cert: Option<String>,
    },
}

impl Peer {
    /// How the audit log names the source.
    pub fn source(&self) -> String {
        match self {
            Peer::Unix => "unix".into(),
            Peer::Tls { addr, .. } => addr.to_string(),
        }
    }
}

/// Serves `app` over TLS on `listener` until `stop` turns true, within `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    app: axum::Router,
    limits: Arc<crate::access::limits::Limits>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("semaphore open"),
            _ = stopped(&mut stop) => return,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
        // Counted before the handshake: this may close the oldest idle connection of the
        // address to make room.
        let connection = Arc::new(limits.connect(addr.ip()));
        tokio::spawn(async move {
            serve_connection(acceptor, stream, addr, app, connection, stop).await;
            drop(permit);
        });
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    app: axum::Router,
    limits: Arc<crate::access::limits::Connection>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let evicted = Arc::clone(&limits.evicted);
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
        _ = evicted.notified() => {
            tracing::debug!(%addr, "closed a connection that had not signed in, to make room");
            return;
        }
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "TLS handshake timed out");
            return;
        }
    };
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|der| fingerprint(der));
    let peer = Peer::Tls { addr, client_cert };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            req.extensions_mut().insert(Arc::clone(&limits));
            let app = app.clone();
            async move {
                use tower::ServiceExt as _;
                let req =
                    req.map(|body| axum::body::Body::new(DeadlineBody::new(body, BODY_TIMEOUT)));
                app.oneshot(req).await
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => if let Err(e) = result {
            tracing::debug!(%addr, error = %e, "TLS connection ended with an error");
        },
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        }
        _ = evicted.notified() => {
            tracing::debug!(%addr, "closed a connection that had not signed in, to make room");
        }
    }
}

/// A request body that fails once `limit` has passed before it was fully received.
struct DeadlineBody<B> {
    inner: B,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            timer: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = self.get_mut();
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            let message = format!(
                "the request body did not arrive within {} s",
                this.limit.as_secs()
            );
            return Poll::Ready(Some(Err(message.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_fails() {
        use http_body_util::BodyExt as _;
        let never = http_body_util::StreamBody::new(futures::stream::pending::<
            Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>,
        >());
        let body = DeadlineBody::new(never, Duration::from_secs(10));
        let Err(err) = body.collect().await else {
            panic!("the deadline should fail the body");
        };
        assert!(err.to_string().contains("within 10 s"), "{err}");
        let whole = DeadlineBody::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
            Duration::from_secs(10),
        );
        assert_eq!(whole.collect().await.unwrap().to_bytes().as_ref(), b"{}");
    }

    #[test]
    fn days_convert_to_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(civil_date(20_513), (2026, 3, 1));
    }

    #[test]
    fn the_ca_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = TlsMaterial::load_or_create(dir.path(), &[]).unwrap();
        let b = TlsMaterial::load_or_create(dir.path(), &["h.example".into()]).unwrap();
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert = a.issue_client_cert("alice", 30).unwrap();
        assert!(
            cert.cert_pem.contains("BEGIN CERTIFICATE") && cert.key_pem.contains("PRIVATE KEY")
        );
        assert_eq!(cert.fingerprint.len(), 64);
    }
}
