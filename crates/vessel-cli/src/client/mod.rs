//! A small HTTP/1.1 client for the daemon's REST API, over its unix socket or over TLS.
//!
//! [`Client`] is one type whose calls are split by noun, one `impl Client` block a file, each
//! next to the routes it calls: `vm.rs` (`/v1/vms/**`: lifecycle, disks, snapshots, NICs,
//! console), `storage.rs` (pools, volumes, images), `network.rs`, `access.rs` (identities,
//! projects, audit), `observe.rs` (operations, events, stats, host). They all go through the
//! few request shapes below, over `transport.rs` (one exchange, its errors) and `tls.rs` (the
//! remote API).

mod access;
mod network;
mod observe;
mod storage;
pub mod tls;
mod transport;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vessel_api::Accepted;

pub use access::AuditQuery;
pub use observe::{EventStream, StatsRound};
pub use transport::{parse_error_body, ClientError, Unreachable, EXIT_UNREACHABLE};
pub use vm::{VmAction, CONSOLE_UPGRADE_PROTOCOL};

/// The socket the daemon listens on unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vessel/vessel.sock";

/// The outcome of a mutating request: finished (the request waited), or accepted (`--no-wait`).
// A return value, matched once and dropped: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    Done(T),
    Accepted(Accepted),
}

/// A client of one daemon, addressed by its socket path.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// Set for a remote daemon (TLS); `socket` is then unused.
    remote: Option<Arc<tls::RemoteTarget>>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            remote: None,
        }
    }

    /// A client of a daemon's remote API (TLS, token or client certificate).
    pub fn remote(target: tls::RemoteTarget) -> Self {
        Client {
            socket: PathBuf::from(&target.url),
            remote: Some(Arc::new(target)),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET` and decode the answer.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// Sends a request whose answer is the resource itself, and decodes it.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.exchange(method, path, body).await?;
        self.decode(status, &bytes)
    }

    /// Sends a request whose answer carries nothing this client reads (deletes).
    async fn call_ignoring_answer(&self, method: Method, path: &str) -> Result<(), ClientError> {
        self.exchange(method, path, None).await.map(|_| ())
    }

    /// Sends a request that may only start an operation: `202 Accepted` is its operation,
    /// any other success the finished result.
    async fn mutate<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Outcome<T>, ClientError> {
        let (status, body) = self.exchange(method, path, body).await?;
        if status == StatusCode::ACCEPTED {
            self.decode(status, &body).map(Outcome::Accepted)
        } else {
            self.decode(status, &body).map(Outcome::Done)
        }
    }
}

pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("API request types serialize to JSON")
}

/// `path` with `wait=false` added to its query when the caller does not wait.
fn with_wait(path: String, wait: bool) -> String {
    if wait {
        path
    } else if path.contains('?') {
        format!("{path}&wait=false")
    } else {
        format!("{path}?wait=false")
    }
}

/// `base?a&b` (or `base` with no parameters).
fn with_query(base: &str, params: &[String]) -> String {
    if params.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", params.join("&"))
    }
}

/// `base/{name}` with `name` encoded as one segment.
fn item_path(base: &str, name: &str) -> String {
    format!("{base}/{}", encode_segment(name))
}

/// Percent-encodes a path segment, so that a name the daemon will reject still reaches it as
/// one segment and gets a proper error instead of a wrong route.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("web-1.a_b"), "web-1.a_b");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment(".."), "..");
        assert_eq!(item_path("/v1/pools", "a/b"), "/v1/pools/a%2Fb");
    }

    #[test]
    fn wait_false_is_appended_to_the_query() {
        assert_eq!(with_wait("/v1/vms".into(), true), "/v1/vms");
        assert_eq!(with_wait("/v1/vms".into(), false), "/v1/vms?wait=false");
        assert_eq!(
            with_wait("/v1/vms/a?force=true".into(), false),
            "/v1/vms/a?force=true&wait=false"
        );
    }
}
