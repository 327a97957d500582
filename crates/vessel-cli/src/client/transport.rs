//! One HTTP/1.1 exchange with the daemon, over its unix socket or over TLS ([`super::tls`]), and
//! what can go wrong doing it: the request's headers, the connection, reading the body and
//! turning a non-2xx answer into a [`ClientError`].
//!
//! One connection per request: the daemon is local, connecting costs microseconds, and it keeps
//! the client free of pooling and reconnect logic.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use vessel_api::{ApiError, ErrorBody, ErrorCode};

use super::Client;

const USER_AGENT: &str = concat!("vessel-cli/", env!("CARGO_PKG_VERSION"));

/// Exit code when the daemon cannot be reached at all.
pub const EXIT_UNREACHABLE: i32 = 7;

/// Why the daemon could not be reached.
#[derive(Debug)]
pub enum Unreachable {
    /// The socket file does not exist.
    Missing,
    /// The file exists but nothing accepts connections on it.
    Refused,
    /// The caller may not open the socket.
    PermissionDenied,
    /// Any other connect failure.
    Other(io::Error),
}

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}", unreachable_message(socket, reason))]
    Unreachable {
        socket: PathBuf,
        reason: Unreachable,
    },
    /// The daemon answered with an API error.
    #[error("{}", error.message)]
    Api { status: u16, error: ApiError },
    /// The connection broke or HTTP failed below the API.
    #[error("the connection to the daemon at {} failed", socket.display())]
    Connection {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    /// A remote daemon (TLS) could not be reached or its identity could not be verified.
    #[error("cannot reach the Vessel daemon at {url}: {detail}")]
    Remote { url: String, detail: String },
    /// The daemon answered something this client does not understand.
    #[error("the daemon at {} sent an unexpected response: {detail}", socket.display())]
    Protocol { socket: PathBuf, detail: String },
}

fn unreachable_message(socket: &Path, reason: &Unreachable) -> String {
    let socket = socket.display();
    match reason {
        Unreachable::Missing => {
            format!("cannot reach the Vessel daemon: the socket {socket} does not exist")
        }
        Unreachable::Refused => {
            format!("cannot reach the Vessel daemon: nothing accepts connections on {socket}")
        }
        Unreachable::PermissionDenied => {
            format!("permission denied on the Vessel daemon's socket {socket}")
        }
        Unreachable::Other(err) => {
            format!("cannot reach the Vessel daemon at {socket}: {err}")
        }
    }
}

impl ClientError {
    /// A line telling the user what to do about the error, where there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Unreachable {
                reason: Unreachable::PermissionDenied,
                ..
            } => Some(
                "the socket is only open to root and its group: run the command as root (for \
                 example with sudo) or as a member of the socket's group, or point --socket / \
                 VESSEL_SOCKET at a socket you may use"
                    .into(),
            ),
            ClientError::Unreachable { .. } => Some(
                "start the daemon with `vessel daemon`, or point --socket (or the VESSEL_SOCKET \
                 environment variable) at the socket the daemon listens on"
                    .into(),
            ),
            ClientError::Api { error, .. } => error.hint.clone(),
            ClientError::Remote { .. } => Some(
                "check the URL and that the daemon runs with --listen; if its CA changed, run \
                 `vessel remote remove NAME` and `vessel remote add` again"
                    .into(),
            ),
            ClientError::Connection { .. } => {
                Some("check that the daemon is still running (see its log)".into())
            }
            ClientError::Protocol { .. } => {
                Some("check that the daemon and this CLI are the same Vessel version".into())
            }
        }
    }

    /// The process exit code for this error: 7 when the daemon is unreachable, the API error
    /// code's own exit code for API errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Remote { .. } => EXIT_UNREACHABLE,
            ClientError::Api { error, .. } => error.code.exit_code(),
            ClientError::Connection { .. } | ClientError::Protocol { .. } => 1,
        }
    }
}

/// Sends `request` on a fresh connection `io` (a unix stream or a TLS stream) and returns the
/// response head; the body is read from it later. Upgrades (the console) stay possible.
pub(super) async fn send_on<S>(
    io: S,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        // Errors surface through the request future; the task only drives the connection.
        let _ = connection.with_upgrades().await;
    });
    sender.send_request(request).await
}

impl Client {
    /// Sends one request and reads the whole response; non-2xx statuses become errors.
    pub(crate) async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let request = self.request(method, path, body);
        let response = self.send(request).await?;
        let status = response.status();
        let body = self.collect(response).await?;
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(self.api_error(status, &body))
        }
    }

    /// Sends one request and returns the response while its body is still unread (streams:
    /// the console log, events), or the API error of a non-2xx answer.
    pub(super) async fn open_stream(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let response = self.send(request).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.read_error(response).await)
        }
    }

    pub(super) fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Request<Full<Bytes>> {
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().expect("API paths are valid URIs");
        let headers = request.headers_mut();
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if has_body {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        request
    }

    pub(super) async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        if let Some(remote) = &self.remote {
            return remote.send(request).await;
        }
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|err| self.unreachable(err))?;
        send_on(stream, request)
            .await
            .map_err(|source| self.connection(source))
    }

    async fn collect(&self, response: Response<Incoming>) -> Result<Bytes, ClientError> {
        response
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|source| self.connection(source))
    }

    pub(super) async fn read_error(&self, response: Response<Incoming>) -> ClientError {
        let status = response.status();
        match self.collect(response).await {
            Ok(body) => self.api_error(status, &body),
            Err(err) => err,
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        status: StatusCode,
        body: &[u8],
    ) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|err| {
            self.protocol(format!(
                "cannot read its {status} answer ({err}): {}",
                snippet(body)
            ))
        })
    }

    /// Turns a non-2xx response into an error, reading the API's error body where there is one.
    fn api_error(&self, status: StatusCode, body: &[u8]) -> ClientError {
        match parse_error_body(body) {
            Some(error) => ClientError::Api {
                status: status.as_u16(),
                error,
            },
            None => self.protocol(format!("{status}: {}", snippet(body))),
        }
    }

    fn unreachable(&self, err: io::Error) -> ClientError {
        let reason = match err.kind() {
            io::ErrorKind::NotFound => Unreachable::Missing,
            io::ErrorKind::ConnectionRefused => Unreachable::Refused,
            io::ErrorKind::PermissionDenied => Unreachable::PermissionDenied,
            _ if err.raw_os_error() == Some(libc::ENOTDIR) => Unreachable::Missing,
            _ => Unreachable::Other(err),
        };
        ClientError::Unreachable {
            socket: self.socket.clone(),
            reason,
        }
    }

    pub(super) fn connection(&self, source: hyper::Error) -> ClientError {
        connection_error(&self.socket, source)
    }

    pub(super) fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            detail,
        }
    }
}

/// The connection to the daemon at `socket` (a path, or a remote's URL) broke.
pub(super) fn connection_error(socket: &Path, source: hyper::Error) -> ClientError {
    ClientError::Connection {
        socket: socket.to_path_buf(),
        source,
    }
}

/// Reads an API error body. Tolerates fields this client does not know yet, so that a newer
/// daemon's errors still reach the user.
pub fn parse_error_body(body: &[u8]) -> Option<ApiError> {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return Some(parsed.error);
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let code: ErrorCode = serde_json::from_value(error.get("code")?.clone()).ok()?;
    let message = error.get("message")?.as_str()?.to_string();
    let hint = error
        .get("hint")
        .and_then(|hint| hint.as_str())
        .map(str::to_string);
    Some(ApiError {
        code,
        message,
        hint,
    })
}

/// The start of a body for an error message, on one line.
fn snippet(body: &[u8]) -> String {
    const LIMIT: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut out: String = text.chars().take(LIMIT).collect();
    if text.chars().count() > LIMIT {
        out.push('…');
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_with_unknown_fields_is_still_read() {
        let body = br#"{"error":{"code":"conflict","message":"busy","hint":"wait","trace":"x"}}"#;
        let error = parse_error_body(body).unwrap();
        assert_eq!(error.code, ErrorCode::Conflict);
        assert_eq!(error.message, "busy");
        assert_eq!(error.hint.as_deref(), Some("wait"));
        assert!(parse_error_body(b"not json").is_none());
        assert!(parse_error_body(br#"{"error":{"code":"new_code","message":"m"}}"#).is_none());
    }
}
