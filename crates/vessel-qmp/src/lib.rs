//! Async client for the QEMU Machine Protocol (QMP).
//!
//! A [`Qmp`] handle talks to one QMP monitor over a unix socket. Commands may
//! be issued concurrently from any number of tasks: every command carries a
//! unique `id` and a single background reader task routes each reply back to
//! the caller that sent it. Asynchronous events go to the [`EventStream`]
//! returned next to the handle.
//!
//! Dropping every clone of the [`Qmp`] handle closes the connection, which
//! also ends the [`EventStream`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Largest message (one line, terminator included) accepted from QEMU.
/// `query-qmp-schema` and friends are a few hundred KiB; anything near this
/// size means the peer is not a sane QMP server.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// Timeout used by [`Qmp::execute`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an offending message is quoted in a [`QmpError::Protocol`].
const EXCERPT_LEN: usize = 200;

/// Everything that can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Reading from or writing to the socket failed.
    #[error("QMP connection I/O failed")]
    Io(#[source] io::Error),
    /// QEMU sent something that is not valid QMP; the text says what.
    #[error("QMP protocol violation: {0}")]
    Protocol(String),
    /// QEMU answered the command with `{"error": {...}}`.
    #[error("QEMU refused the command: {desc} ({class})")]
    Command { class: String, desc: String },
    /// No reply arrived in time. The command may still run inside QEMU.
    #[error("QMP command {command} got no reply within {after:?}")]
    Timeout { command: String, after: Duration },
    /// The connection closed before the reply arrived.
    #[error("QMP connection closed before the reply arrived")]
    Closed,
}

/// An asynchronous QMP event such as `STOP` or `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    /// The event's `data` member, `Value::Null` for events that carry none.
    pub data: Value,
    /// QEMU's host clock at the time of the event, in microseconds since the
    /// Unix epoch.
    pub timestamp_micros: u64,
}

/// QEMU version as announced in the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// Distribution build string, e.g. `Debian 1:7.2+dfsg-7`; may be empty.
    pub package: String,
}

/// The `{"QMP": {...}}` banner QEMU sends on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub version: QemuVersion,
    /// Capabilities QEMU offers (e.g. `oob`). None of them are enabled.
    pub capabilities: Vec<String>,
}

/// Events received on a connection, in the order QEMU sent them.
///
/// Unbounded so the reader never blocks on a slow consumer and no event is
/// dropped; a consumer that never reads should drop the stream instead.
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<QmpEvent>,
}

impl EventStream {
    /// Next event; `None` once the connection closed and every event received
    /// before that has been returned.
    pub async fn next(&mut self) -> Option<QmpEvent> {
        self.rx.recv().await
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("buffered", &self.rx.len())
            .finish()
    }
}

type Reply = Result<Value, QmpError>;

/// State shared between the handles and the reader task. The reader holds
/// only this (never the write half), so dropping the last handle really
/// closes the socket.
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Set once, by the reader, while holding `pending`: a command registered
    /// under that lock either sees `true` or is failed by the reader's drain.
    closed: watch::Sender<bool>,
    next_id: AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        // Nothing panics while holding the lock; if it ever did the map is
        // still consistent, so poisoning carries no information.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Inner {
    shared: Arc<Shared>,
    // An Arc of its own so a write can finish in a detached task even if the
    // caller gives up: a half-written command would corrupt the stream.
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    greeting: Greeting,
    reader: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A connection to a QMP monitor. Cheap to clone; all clones share the
/// connection.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.inner.greeting.version)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Removes a command's pending entry however `execute` ends (reply, timeout,
/// write error or the caller dropping the future), so nothing leaks.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.id);
    }
}

impl Qmp {
    /// Connects to the QMP unix socket at `path`, reads the greeting and
    /// negotiates capabilities. The whole handshake is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<(Qmp, EventStream), QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, UnixStream::connect(path)).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    command: "connect".to_owned(),
                    after: timeout,
                })
            }
            // Keep the kind (callers retry on NotFound/ConnectionRefused while
            // QEMU starts) but say which socket it was.
            Ok(Err(e)) => {
                return Err(QmpError::Io(io::Error::new(
                    e.kind(),
                    format!("connecting to {}: {e}", path.display()),
                )))
            }
            Ok(Ok(stream)) => stream,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        Self::handshake(stream, remaining)
            .await
            .map_err(|e| with_total_timeout(e, timeout))
    }

    /// Like [`Qmp::connect`], over a stream that is already connected.
    pub async fn handshake(
        stream: UnixStream,
        timeout: Duration,
    ) -> Result<(Qmp, EventStream), QmpError> {
        let deadline = Instant::now() + timeout;
        let (read_half, write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half);
        let mut line = Vec::new();
        match tokio::time::timeout_at(deadline, read_message(&mut reader, &mut line)).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    command: "greeting".to_owned(),
                    after: timeout,
                })
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(false)) => return Err(QmpError::Closed),
            Ok(Ok(true)) => {}
        }
        let greeting = parse_greeting(&line)?;
        tracing::debug!(version = ?greeting.version, "QMP greeting received");

        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed,
            next_id: AtomicU64::new(1),
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // The reader starts before capabilities negotiation so the reply to
        // qmp_capabilities is routed like any other reply.
        let reader_task = tokio::spawn(read_loop(reader, line, Arc::clone(&shared), events_tx));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                shared,
                writer: Arc::new(tokio::sync::Mutex::new(write_half)),
                greeting,
                reader: reader_task.abort_handle(),
            }),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        qmp.execute_with_timeout("qmp_capabilities", None, remaining)
            .await
            .map_err(|e| with_total_timeout(e, timeout))?;
        Ok((qmp, EventStream { rx: events_rx }))
    }

    /// The greeting QEMU sent when the connection was opened.
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// Runs `command` and returns its `return` value, waiting at most
    /// [`DEFAULT_COMMAND_TIMEOUT`].
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, DEFAULT_COMMAND_TIMEOUT)
            .await
    }

    /// Runs `command` and returns its `return` value, waiting at most
    /// `timeout` for the reply. On timeout the command may still complete
    /// inside QEMU; its late reply is discarded.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.exchange(command, arguments, timeout, None).await
    }

    /// Runs `command` with a file descriptor attached to it (SCM_RIGHTS), as QMP's `getfd` and
    /// `add-fd` expect: how a running QEMU receives a tap or a file it may not open itself. The
    /// descriptor is closed on our side once sent.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: OwnedFd,
    ) -> Result<Value, QmpError> {
        self.exchange(command, arguments, DEFAULT_COMMAND_TIMEOUT, Some(fd))
            .await
    }

    async fn exchange(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
        fd: Option<OwnedFd>,
    ) -> Result<Value, QmpError> {
        let shared = &*self.inner.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = serde_json::Map::new();
        message.insert("execute".to_owned(), Value::from(command));
        if let Some(arguments) = arguments {
            message.insert("arguments".to_owned(), arguments);
        }
        message.insert("id".to_owned(), Value::from(id));
        let mut bytes = Value::Object(message).to_string().into_bytes();
        bytes.push(b'\n');

        let (reply_tx, reply_rx) = oneshot::channel();
        let _guard = {
            let mut pending = shared.pending();
            if *shared.closed.borrow() {
                return Err(QmpError::Closed);
            }
            pending.insert(id, reply_tx);
            PendingGuard { shared, id }
        };
        tracing::debug!(command, id, "sending QMP command");

        let exchange = async {
            let writer = Arc::clone(&self.inner.writer);
            let write = tokio::spawn(async move {
                let mut writer = writer.lock().await;
                let sent = match fd {
                    Some(fd) => send_with_fd(writer.as_ref(), &bytes, fd).await?,
                    None => 0,
                };
                writer.write_all(&bytes[sent..]).await
            });
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if is_disconnect(&e) || *shared.closed.borrow() => {
                    return Err(QmpError::Closed)
                }
                Ok(Err(e)) => return Err(QmpError::Io(e)),
                // Only happens when the runtime is shutting down.
                Err(_) => return Err(QmpError::Closed),
            }
            // The sender is dropped without a value only if the reader task
            // was torn down, i.e. the connection is gone.
            reply_rx.await.unwrap_or(Err(QmpError::Closed))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(command, id, ?timeout, "QMP command timed out");
                Err(QmpError::Timeout {
                    command: command.to_owned(),
                    after: timeout,
                })
            }
        }
    }

    /// Resolves once the connection is closed (QEMU exited, closed the
    /// socket, or broke the protocol). Returns at once if that already
    /// happened.
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.closed.subscribe();
        // The sender lives in `Shared`, which `self` keeps alive, so this
        // cannot fail with "sender dropped".
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Whether the connection is closed. Commands fail with
    /// [`QmpError::Closed`] from then on.
    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.borrow()
    }
}

/// Sends the first part of `bytes` with `fd` attached; returns how many bytes went (the rest
/// is written as usual: the descriptor travels with the first byte).
async fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: OwnedFd) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg_fd(stream.as_raw_fd(), bytes, fd.as_raw_fd())
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

fn sendmsg_fd(socket: RawFd, bytes: &[u8], fd: RawFd) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE only computes a size from a constant.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header that we fill in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes, enough for one header with one fd, so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA has room for the fd; the buffers outlive the call.
    let sent = unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::copy_nonoverlapping(
            &fd as *const RawFd as *const u8,
            libc::CMSG_DATA(header),
            std::mem::size_of::<RawFd>(),
        );
        libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Reports a handshake step's timeout against the whole handshake budget the
/// caller asked for, not the remainder that step had left.
fn with_total_timeout(error: QmpError, total: Duration) -> QmpError {
    match error {
        QmpError::Timeout { command, .. } => QmpError::Timeout {
            command,
            after: total,
        },
        other => other,
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Reads one newline-terminated message into `line` (terminator included).
/// Returns `false` on end of stream; a trailing partial line is dropped
/// because QEMU always terminates its messages, so it can only be a
/// truncated one.
async fn read_message<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<bool, QmpError> {
    line.clear();
    loop {
        let available = reader.fill_buf().await.map_err(QmpError::Io)?;
        if available.is_empty() {
            if !line.is_empty() {
                tracing::debug!(
                    bytes = line.len(),
                    "QMP stream ended inside a message; discarded"
                );
            }
            return Ok(false);
        }
        let (chunk, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..=end], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > MAX_MESSAGE_LEN {
            return Err(QmpError::Protocol(format!(
                "message exceeds {MAX_MESSAGE_LEN} bytes; starts with {}",
                excerpt(if line.is_empty() { chunk } else { &line[..] })
            )));
        }
        line.extend_from_slice(chunk);
        let used = chunk.len();
        reader.consume(used);
        if complete {
            return Ok(true);
        }
    }
}

/// Why the reader stopped; decides what pending commands are told.
enum Shutdown {
    Eof,
    Failed(QmpError),
}

async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    mut line: Vec<u8>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    let shutdown = loop {
        match read_message(&mut reader, &mut line).await {
            Ok(true) => dispatch(&line, &shared, &events),
            Ok(false) => break Shutdown::Eof,
            Err(e) => break Shutdown::Failed(e),
        }
    };
    match &shutdown {
        Shutdown::Eof => tracing::debug!("QMP connection closed by peer"),
        Shutdown::Failed(e) => tracing::warn!(error = %e, "QMP connection failed"),
    }
    let mut pending = shared.pending();
    shared.closed.send_replace(true);
    for (_, waiter) in pending.drain() {
        // The error is not Clone (io::Error), so each waiter gets a rebuilt
        // copy that keeps what matters: the kind and the message.
        let error = match &shutdown {
            Shutdown::Eof => QmpError::Closed,
            Shutdown::Failed(QmpError::Io(e)) => {
                QmpError::Io(io::Error::new(e.kind(), e.to_string()))
            }
            Shutdown::Failed(QmpError::Protocol(text)) => QmpError::Protocol(text.clone()),
            Shutdown::Failed(_) => QmpError::Closed,
        };
        let _ = waiter.send(Err(error));
    }
}

fn dispatch(line: &[u8], shared: &Shared, events: &mpsc::UnboundedSender<QmpEvent>) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    // Framing is by line, so a garbled message can be skipped without losing
    // sync; the command it answered (if any) will time out.
    let mut message = match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) => {
            tracing::warn!(received = %excerpt(line), "ignoring QMP message that is not a JSON object");
            return;
        }
    };
    if let Some(name) = message.get("event").and_then(Value::as_str) {
        let event = QmpEvent {
            event: name.to_owned(),
            data: message.remove("data").unwrap_or(Value::Null),
            timestamp_micros: timestamp_micros(message.get("timestamp")),
        };
        tracing::debug!(event = %event.event, "QMP event");
        // A dropped EventStream just means nobody is interested.
        let _ = events.send(event);
        return;
    }
    let reply = if let Some(value) = message.remove("return") {
        Ok(value)
    } else if let Some(error) = message.get("error") {
        let field = |name: &str| {
            error
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Err(QmpError::Command {
            class: field("class"),
            desc: field("desc"),
        })
    } else if message.contains_key("QMP") {
        tracing::warn!("ignoring repeated QMP greeting");
        return;
    } else {
        tracing::warn!(received = %excerpt(line), "ignoring unrecognised QMP message");
        return;
    };
    let Some(id) = message.get("id").and_then(Value::as_u64) else {
        tracing::warn!(received = %excerpt(line), "ignoring QMP reply without a usable id");
        return;
    };
    let waiter = shared.pending().remove(&id);
    match waiter {
        // The caller may have given up between our lookup and now.
        Some(waiter) => {
            let _ = waiter.send(reply);
        }
        None if id < shared.next_id.load(Ordering::Relaxed) => {
            tracing::debug!(
                id,
                "discarding reply to a command that timed out or was cancelled"
            );
        }
        None => tracing::warn!(id, "ignoring QMP reply with an id that was never sent"),
    }
}

fn timestamp_micros(timestamp: Option<&Value>) -> u64 {
    let part = |name: &str| {
        timestamp
            .and_then(|t| t.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    part("seconds")
        .saturating_mul(1_000_000)
        .saturating_add(part("microseconds"))
}

#[derive(Deserialize)]
struct RawGreeting {
    #[serde(rename = "QMP")]
    qmp: RawGreetingBody,
}

#[derive(Deserialize)]
struct RawGreetingBody {
    version: RawVersion,
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Deserialize)]
struct RawVersion {
    qemu: RawTriple,
    #[serde(default)]
    package: String,
}

#[derive(Deserialize)]
struct RawTriple {
    major: u32,
    minor: u32,
    micro: u32,
}

fn parse_greeting(line: &[u8]) -> Result<Greeting, QmpError> {
    let raw: RawGreeting = serde_json::from_slice(line).map_err(|e| {
        QmpError::Protocol(format!(
            "expected a QMP greeting ({e}), received {}",
            excerpt(line)
        ))
    })?;
    let RawGreetingBody {
        version,
        capabilities,
    } = raw.qmp;
    Ok(Greeting {
        version: QemuVersion {
            major: version.qemu.major,
            minor: version.qemu.minor,
            micro: version.qemu.micro,
            package: version.package.trim().to_owned(),
        },
        capabilities,
    })
}

/// A printable, bounded quote of received bytes for logs and errors.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    match text.char_indices().nth(EXCERPT_LEN) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests;
