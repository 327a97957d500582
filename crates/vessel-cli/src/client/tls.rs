//! The client side of the remote API: TLS to a daemon whose CA this client pinned, with a
//! bearer token and/or a client certificate, and the first contact that shows the CA's
//! fingerprint before anything is trusted.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::transport::connection_error;
use super::ClientError;

/// The name every Vessel server certificate carries; checked whatever address is dialled, since
/// the trust anchor is the daemon's own pinned CA.
const SERVER_NAME: &str = "vessel";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A daemon reached over TLS.
#[derive(Clone)]
pub struct RemoteTarget {
    /// `https://host:port`, for messages.
    pub url: String,
    /// `host:port`, to connect to.
    pub authority: String,
    connector: tokio_rustls::TlsConnector,
    token: Option<String>,
}

impl std::fmt::Debug for RemoteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("RemoteTarget")
            .field("url", &self.url)
            .finish()
    }
}

/// `host:port` of an `https://` URL (port 8443 when absent).
pub fn authority_of(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "{url:?} must be https://HOST[:PORT] without a path"
        ));
    }
    let has_port = match host.rfind(']') {
        Some(close) => host[close..].contains(':'),
        None => host.contains(':'),
    };
    Ok(if has_port {
        host.to_string()
    } else {
        format!("{host}:8443")
    })
}

/// SHA-256 of a DER certificate as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether two fingerprints are the same, ignoring case and colons.
pub fn same_fingerprint(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    !norm(a).is_empty() && norm(a) == norm(b)
}

pub fn parse_pem_cert(pem: &str) -> Result<CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

/// A client certificate and key (PEM).
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl RemoteTarget {
    pub fn new(
        url: &str,
        ca_pem: &str,
        token: Option<String>,
        identity: Option<&ClientIdentity>,
    ) -> Result<RemoteTarget, String> {
        let authority = authority_of(url)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(parse_pem_cert(ca_pem)?)
            .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(id) => {
                use rustls::pki_types::pem::PemObject;
                let cert = parse_pem_cert(&id.cert_pem)?;
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                    .map_err(|e| format!("the client key is not a PEM private key: {e}"))?;
                builder
                    .with_client_auth_cert(vec![cert], key)
                    .map_err(|e| format!("the client certificate is not usable: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(RemoteTarget {
            url: url.trim_end_matches('/').to_string(),
            authority,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            token,
        })
    }

    fn unreachable(&self, detail: String) -> ClientError {
        ClientError::Remote {
            url: self.url.clone(),
            detail,
        }
    }

    /// Sends one request on a new connection.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.unreachable(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(SERVER_NAME).expect("valid server name");
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| self.unreachable(format!("TLS failed: {e}")))?;
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| self.unreachable("the stored token is not valid text".into()))?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        super::transport::send_on(tls, request)
            .await
            .map_err(|source| connection_error(Path::new(&self.url), source))
    }
}

/// First contact: connects without trusting anything and returns the certificate chain the
/// server showed (server certificate first, CA last). Nothing is sent but the handshake.
pub async fn fetch_chain(url: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let authority = authority_of(url)?;
    let capture = Arc::new(Capture {
        chain: Mutex::new(Vec::new()),
        provider: provider(),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(SERVER_NAME).expect("valid server name");
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {authority} failed: {e}"))?;
    let chain = capture.chain.lock().expect("chain lock").clone();
    if chain.is_empty() {
        return Err(format!("{authority} showed no certificate"));
    }
    Ok(chain)
}

/// Accepts any certificate, remembering it: used only to show the fingerprint to the user, who
/// decides. Signatures are still checked, so the server does hold the key of what it showed.
#[derive(Debug)]
struct Capture {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().expect("chain lock") = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The PEM text of a DER certificate.
pub fn to_pem(der: &[u8]) -> String {
    use base64_lite::encode;
    let b64 = encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Standard base64 (with padding), enough for PEM.
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(authority_of("https://h:9000").unwrap(), "h:9000");
        assert_eq!(authority_of("https://h/").unwrap(), "h:8443");
        assert_eq!(authority_of("https://[::1]").unwrap(), "[::1]:8443");
        assert_eq!(authority_of("https://[::1]:1").unwrap(), "[::1]:1");
        assert!(authority_of("http://h").is_err());
        assert!(authority_of("https://h/x").is_err());
    }

    #[test]
    fn fingerprints_compare_without_colons_or_case() {
        assert!(same_fingerprint("AB:cd:01", "abcd01"));
        assert!(!same_fingerprint("AB:cd:01", "abcd02"));
        assert!(!same_fingerprint("", ""));
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64_lite::encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_lite::encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64_lite::encode(b"foob"), "Zm9vYg==");
    }
}
