//! A small HTTP/1.1 client for the daemon's REST API over its unix socket.
//!
//! One connection per request: the daemon is local, connecting costs microseconds, and it keeps
//! the client free of pooling and reconnect logic.

mod networks;

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use vessel_api::{
    Accepted, ApiError, CloneVolumeRequest, CreatePoolRequest, CreateVmRequest,
    CreateVolumeRequest, EditVmRequest, ErrorBody, ErrorCode, Event, HostCheck, HostInfo,
    Operation, Pool, ResizeVolumeRequest, StopVmRequest, Vm, Volume,
};

/// The socket the daemon listens on unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vessel/vessel.sock";

/// The protocol name the console route upgrades to.
pub const CONSOLE_UPGRADE_PROTOCOL: &str = "vessel-console";

const USER_AGENT: &str = concat!("vessel-cli/", env!("CARGO_PKG_VERSION"));

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

/// Exit code when the daemon cannot be reached at all.
pub const EXIT_UNREACHABLE: i32 = 7;

/// The outcome of a mutating request: finished (the request waited), or accepted (`--no-wait`).
// A return value, matched once and dropped: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    Done(T),
    Accepted(Accepted),
}

/// A lifecycle action on a VM, with the body the route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Stop(StopVmRequest),
    Kill,
    /// `force`: hard reset instead of a clean power-off and start.
    Reboot {
        force: bool,
    },
    Pause,
    Resume,
}

impl VmAction {
    /// The last path segment of the action's route.
    pub fn verb(&self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop(_) => "stop",
            VmAction::Kill => "kill",
            VmAction::Reboot { .. } => "reboot",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
        }
    }

    fn body(&self) -> Option<Vec<u8>> {
        match self {
            VmAction::Stop(req) => Some(to_json(req)),
            VmAction::Reboot { force } => Some(to_json(&serde_json::json!({ "force": force }))),
            _ => None,
        }
    }
}

/// A client of one daemon, addressed by its socket path.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// Set for a remote daemon (TLS); `socket` is then unused.
    remote: Option<std::sync::Arc<crate::tls::RemoteTarget>>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            remote: None,
        }
    }

    /// A client of a daemon's remote API (TLS, token or client certificate).
    pub fn remote(target: crate::tls::RemoteTarget) -> Self {
        Client {
            socket: PathBuf::from(&target.url),
            remote: Some(std::sync::Arc::new(target)),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/vms`
    pub async fn list_vms(&self) -> Result<Vec<Vm>, ClientError> {
        self.get("/v1/vms").await
    }

    /// `GET /v1/vms/{name}`
    pub async fn get_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.get(&vm_path(name, "")).await
    }

    /// `POST /v1/vms`
    pub async fn create_vm(
        &self,
        req: &CreateVmRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait("/v1/vms".to_string(), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `PATCH /v1/vms/{name}`
    pub async fn edit_vm(
        &self,
        name: &str,
        req: &EditVmRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(name, ""), wait);
        self.mutate(Method::PATCH, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/vms/{name}?force=`
    pub async fn delete_vm(
        &self,
        name: &str,
        force: bool,
        wait: bool,
    ) -> Result<Outcome<Operation>, ClientError> {
        let path = with_wait(format!("{}?force={force}", vm_path(name, "")), wait);
        self.mutate(Method::DELETE, &path, None).await
    }

    /// `POST /v1/vms/{name}/{start|stop|kill|reboot|pause|resume}`
    pub async fn vm_action(
        &self,
        name: &str,
        action: &VmAction,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(name, action.verb()), wait);
        self.mutate(Method::POST, &path, action.body()).await
    }

    /// `POST /v1/vms/{name}/disks`
    pub async fn attach_disk(
        &self,
        vm: &str,
        req: &vessel_api::AttachDiskRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(vm, "disks"), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/vms/{name}/disks/{pool}/{volume}`
    pub async fn detach_disk(
        &self,
        vm: &str,
        pool: &str,
        volume: &str,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(
            format!(
                "{}/{}/{}",
                vm_path(vm, "disks"),
                encode_segment(pool),
                encode_segment(volume)
            ),
            wait,
        );
        self.mutate(Method::DELETE, &path, None).await
    }

    /// `GET /v1/vms/{name}/snapshots`
    pub async fn list_snapshots(&self, vm: &str) -> Result<Vec<vessel_api::Snapshot>, ClientError> {
        self.get(&vm_path(vm, "snapshots")).await
    }

    /// `POST /v1/vms/{name}/snapshots`
    pub async fn create_snapshot(
        &self,
        vm: &str,
        req: &vessel_api::CreateSnapshotRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(vm, "snapshots"), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `POST /v1/vms/{name}/snapshots/{snapshot}/revert`
    pub async fn revert_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(
            format!(
                "{}/{}/revert",
                vm_path(vm, "snapshots"),
                encode_segment(snapshot)
            ),
            wait,
        );
        self.mutate(Method::POST, &path, None).await
    }

    /// `DELETE /v1/vms/{name}/snapshots/{snapshot}`
    pub async fn delete_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(
            format!("{}/{}", vm_path(vm, "snapshots"), encode_segment(snapshot)),
            wait,
        );
        self.mutate(Method::DELETE, &path, None).await
    }

    /// `POST /v1/operations/{id}/cancel`
    pub async fn cancel_operation(&self, id: &str) -> Result<Operation, ClientError> {
        let path = format!("/v1/operations/{}/cancel", encode_segment(id));
        let (status, body) = self.exchange(Method::POST, &path, None).await?;
        self.decode(status, &body)
    }

    /// `GET /v1/images`
    pub async fn list_images(&self) -> Result<Vec<vessel_api::Image>, ClientError> {
        self.get("/v1/images").await
    }

    /// `GET /v1/images/{name}`
    pub async fn get_image(&self, name: &str) -> Result<vessel_api::Image, ClientError> {
        self.get(&format!("/v1/images/{}", encode_segment(name)))
            .await
    }

    /// `POST /v1/images`: the import's outcome (the image, or the operation with `wait=false`).
    pub async fn import_image(
        &self,
        req: &vessel_api::ImportImageRequest,
        wait: bool,
    ) -> Result<Outcome<vessel_api::Image>, ClientError> {
        let path = with_wait("/v1/images".to_string(), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/images/{name}`
    pub async fn delete_image(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/images/{}", encode_segment(name));
        self.exchange(Method::DELETE, &path, None).await?;
        Ok(())
    }

    /// `POST /v1/pools/{pool}/imports`
    pub async fn import_volume(
        &self,
        pool: &str,
        req: &vessel_api::ImportVolumeRequest,
        wait: bool,
    ) -> Result<Outcome<Volume>, ClientError> {
        let path = with_wait(format!("/v1/pools/{}/imports", encode_segment(pool)), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/export`
    pub async fn export_volume(
        &self,
        pool: &str,
        name: &str,
        req: &vessel_api::ExportVolumeRequest,
        wait: bool,
    ) -> Result<Outcome<vessel_api::ExportedVolume>, ClientError> {
        let path = with_wait(
            format!(
                "{}/{}/export",
                Self::volumes_path(pool),
                encode_segment(name)
            ),
            wait,
        );
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `POST /v1/host/master-key/rotate`
    pub async fn rotate_master_key(&self) -> Result<vessel_api::MasterKeyRotation, ClientError> {
        let (status, body) = self
            .exchange(Method::POST, "/v1/host/master-key/rotate", None)
            .await?;
        self.decode(status, &body)
    }

    /// `GET /v1/vms/{name}/guest`
    pub async fn guest_info(&self, name: &str) -> Result<vessel_api::GuestInfo, ClientError> {
        self.get(&vm_path(name, "guest")).await
    }

    /// `GET /v1/vms/{name}/stats`
    pub async fn vm_stats(&self, name: &str) -> Result<vessel_metrics::VmStats, ClientError> {
        self.get(&vm_path(name, "stats")).await
    }

    /// `GET /v1/host/stats`
    pub async fn host_stats(&self) -> Result<vessel_metrics::HostStats, ClientError> {
        self.get("/v1/host/stats").await
    }

    /// `GET /v1/stats`: the latest sampling round of the host and every VM.
    pub async fn all_stats(&self) -> Result<StatsRound, ClientError> {
        self.get("/v1/stats").await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let (_, body) = self.exchange(Method::GET, "/metrics", None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /v1/pools`
    pub async fn list_pools(&self) -> Result<Vec<Pool>, ClientError> {
        self.get("/v1/pools").await
    }

    /// `GET /v1/pools/{name}`
    pub async fn get_pool(&self, name: &str) -> Result<Pool, ClientError> {
        self.get(&format!("/v1/pools/{}", encode_segment(name)))
            .await
    }

    /// `POST /v1/pools`
    pub async fn create_pool(&self, req: &CreatePoolRequest) -> Result<Pool, ClientError> {
        let (status, body) = self
            .exchange(Method::POST, "/v1/pools", Some(to_json(req)))
            .await?;
        self.decode(status, &body)
    }

    /// `DELETE /v1/pools/{name}`
    pub async fn delete_pool(&self, name: &str) -> Result<(), ClientError> {
        self.exchange(
            Method::DELETE,
            &format!("/v1/pools/{}", encode_segment(name)),
            None,
        )
        .await?;
        Ok(())
    }

    fn volumes_path(pool: &str) -> String {
        format!("/v1/pools/{}/volumes", encode_segment(pool))
    }

    /// `GET /v1/pools/{pool}/volumes`
    pub async fn list_volumes(&self, pool: &str) -> Result<Vec<Volume>, ClientError> {
        self.get(&Self::volumes_path(pool)).await
    }

    /// `GET /v1/pools/{pool}/volumes/{name}`
    pub async fn get_volume(&self, pool: &str, name: &str) -> Result<Volume, ClientError> {
        self.get(&format!(
            "{}/{}",
            Self::volumes_path(pool),
            encode_segment(name)
        ))
        .await
    }

    /// `POST /v1/pools/{pool}/volumes`
    pub async fn create_volume(
        &self,
        pool: &str,
        req: &CreateVolumeRequest,
    ) -> Result<Volume, ClientError> {
        let (status, body) = self
            .exchange(Method::POST, &Self::volumes_path(pool), Some(to_json(req)))
            .await?;
        self.decode(status, &body)
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/resize`
    pub async fn resize_volume(
        &self,
        pool: &str,
        name: &str,
        req: &ResizeVolumeRequest,
    ) -> Result<Volume, ClientError> {
        self.volume_action(pool, name, "resize", to_json(req)).await
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/clone`
    pub async fn clone_volume(
        &self,
        pool: &str,
        name: &str,
        req: &CloneVolumeRequest,
    ) -> Result<Volume, ClientError> {
        self.volume_action(pool, name, "clone", to_json(req)).await
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/clone?wait=false`: the copy's operation.
    pub async fn start_clone_volume(
        &self,
        pool: &str,
        name: &str,
        req: &CloneVolumeRequest,
    ) -> Result<Outcome<Volume>, ClientError> {
        let path = format!(
            "{}/{}/clone?wait=false",
            Self::volumes_path(pool),
            encode_segment(name)
        );
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    async fn volume_action(
        &self,
        pool: &str,
        name: &str,
        verb: &str,
        body: Vec<u8>,
    ) -> Result<Volume, ClientError> {
        let path = format!(
            "{}/{}/{verb}",
            Self::volumes_path(pool),
            encode_segment(name)
        );
        let (status, body) = self.exchange(Method::POST, &path, Some(body)).await?;
        self.decode(status, &body)
    }

    /// `DELETE /v1/pools/{pool}/volumes/{name}`
    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<(), ClientError> {
        let path = format!("{}/{}", Self::volumes_path(pool), encode_segment(name));
        self.exchange(Method::DELETE, &path, None).await?;
        Ok(())
    }

    /// `GET /v1/events?vm=&limit=`
    pub async fn list_events(
        &self,
        vm: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, ClientError> {
        self.list_events_of(vm, &[], limit).await
    }

    /// `GET /v1/events?vm=&kind=&limit=`
    pub async fn list_events_of(
        &self,
        vm: Option<&str>,
        kinds: &[vessel_api::EventKind],
        limit: usize,
    ) -> Result<Vec<Event>, ClientError> {
        self.get(&events_path(vm, kinds, &format!("limit={limit}")))
            .await
    }

    /// `GET /v1/events?follow=true`: a server-sent-event stream; read it with [`EventStream`].
    pub async fn follow_events(
        &self,
        vm: Option<&str>,
        kinds: &[vessel_api::EventKind],
    ) -> Result<EventStream, ClientError> {
        let path = events_path(vm, kinds, "follow=true");
        let response = self.send(self.request(Method::GET, &path, None)).await?;
        if response.status().is_success() {
            Ok(EventStream {
                body: response.into_body(),
                buffer: Vec::new(),
                socket: self.socket.clone(),
            })
        } else {
            Err(self.read_error(response).await)
        }
    }

    /// `GET /v1/operations`
    pub async fn list_operations(&self) -> Result<Vec<Operation>, ClientError> {
        self.get("/v1/operations").await
    }

    /// `GET /v1/operations/{id}`
    pub async fn get_operation(&self, id: &str) -> Result<Operation, ClientError> {
        self.get(&format!("/v1/operations/{}", encode_segment(id)))
            .await
    }

    /// `GET /v1/host`
    pub async fn host_info(&self) -> Result<HostInfo, ClientError> {
        self.get("/v1/host").await
    }

    /// `GET /v1/host/check`
    pub async fn host_check(&self) -> Result<HostCheck, ClientError> {
        self.get("/v1/host/check").await
    }

    /// `GET /v1/vms/{name}/console/log?follow=`: the response body, to be streamed.
    pub async fn console_log(&self, name: &str, follow: bool) -> Result<Incoming, ClientError> {
        let path = format!("{}?follow={follow}", vm_path(name, "console/log"));
        let request = self.request(Method::GET, &path, None);
        let response = self.send(request).await?;
        if response.status().is_success() {
            Ok(response.into_body())
        } else {
            Err(self.read_error(response).await)
        }
    }

    /// `GET /v1/vms/{name}/console` upgraded to a raw byte stream with the serial console.
    pub async fn console_attach(
        &self,
        name: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let mut request = self.request(Method::GET, &vm_path(name, "console"), None);
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::UPGRADE,
            HeaderValue::from_static(CONSOLE_UPGRADE_PROTOCOL),
        );
        let response = self.send(request).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            if response.status().is_success() {
                return Err(self.protocol(format!(
                    "the console route answered {} instead of switching protocols",
                    response.status()
                )));
            }
            return Err(self.read_error(response).await);
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|source| self.connection(source))?;
        Ok(TokioIo::new(upgraded))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.exchange(Method::GET, path, None).await?;
        self.decode(status, &body)
    }

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

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Request<Full<Bytes>> {
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

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        if let Some(remote) = &self.remote {
            return remote.send(request).await;
        }
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|err| self.unreachable(err))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.connection(source))?;
        tokio::spawn(async move {
            // Errors surface through the request future; the task only drives the connection.
            let _ = connection.with_upgrades().await;
        });
        sender
            .send_request(request)
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

    async fn read_error(&self, response: Response<Incoming>) -> ClientError {
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

    fn connection(&self, source: hyper::Error) -> ClientError {
        ClientError::Connection {
            socket: self.socket.clone(),
            source,
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            detail,
        }
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

pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("API request types serialize to JSON")
}

fn events_path(vm: Option<&str>, kinds: &[vessel_api::EventKind], extra: &str) -> String {
    let mut path = format!("/v1/events?{extra}");
    if let Some(vm) = vm {
        path.push_str("&vm=");
        path.push_str(&encode_segment(vm));
    }
    if !kinds.is_empty() {
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        path.push_str("&kind=");
        path.push_str(&names.join(","));
    }
    path
}

/// One sampling round, as `GET /v1/stats` returns it.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct StatsRound {
    pub host: vessel_metrics::HostStats,
    pub vms: Vec<vessel_metrics::VmStats>,
}

/// The events of a `follow_events` stream, one at a time.
pub struct EventStream {
    body: Incoming,
    buffer: Vec<u8>,
    socket: PathBuf,
}

impl EventStream {
    /// The next event, or `None` when the daemon ended the stream. Keep-alive comments and
    /// malformed records are skipped.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let record: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&record);
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if let Ok(event) = serde_json::from_str::<Event>(&data) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    let frame = frame.map_err(|source| ClientError::Connection {
                        socket: self.socket.clone(),
                        source,
                    })?;
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

fn with_wait(path: String, wait: bool) -> String {
    if wait {
        path
    } else if path.contains('?') {
        format!("{path}&wait=false")
    } else {
        format!("{path}?wait=false")
    }
}

/// `/v1/vms/{name}` or `/v1/vms/{name}/{rest}`.
fn vm_path(name: &str, rest: &str) -> String {
    let base = format!("/v1/vms/{}", encode_segment(name));
    if rest.is_empty() {
        base
    } else {
        format!("{base}/{rest}")
    }
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
    fn names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("web-1.a_b"), "web-1.a_b");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment(".."), "..");
        assert_eq!(vm_path("web1", "console/log"), "/v1/vms/web1/console/log");
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

    #[test]
    fn reboot_and_stop_carry_their_bodies() {
        let stop = VmAction::Stop(StopVmRequest {
            force: true,
            timeout_secs: Some(5),
        });
        assert_eq!(
            String::from_utf8(stop.body().unwrap()).unwrap(),
            r#"{"force":true,"timeout_secs":5}"#
        );
        assert_eq!(
            String::from_utf8(VmAction::Reboot { force: false }.body().unwrap()).unwrap(),
            r#"{"force":false}"#
        );
        assert!(VmAction::Start.body().is_none());
    }
}
