//! The QEMU guest agent (qemu-ga), reached over a virtio-serial port every VM has
//! (`org.qemu.guest_agent.0`). Used when the guest runs it; a guest without it never answers,
//! so every call has a short time limit and "no agent" is an ordinary answer, not an error.
//!
//! The agent's protocol is QMP-like JSON without a greeting. Requests the agent never read stay
//! queued in the port, so each conversation starts with `guest-sync-delimited`: the agent answers
//! with a 0xFF byte and our random id, and everything before that is stale and skipped.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use vessel_api::GuestInterface;

/// How long a guest gets to answer a ping before it counts as having no agent.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Limit for other agent commands (a freeze flushes the guest's file systems).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line accepted from the guest: it is untrusted.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent did not answer in time (is qemu-guest-agent running in the guest?)")]
    Timeout,
    #[error("the guest agent's socket is not there (the VM was started without one)")]
    NoChannel,
    #[error("the guest agent refused {command}: {message}")]
    Refused { command: String, message: String },
    #[error("talking to the guest agent failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest agent answered something unreadable: {0}")]
    Protocol(String),
}

/// The agent of one VM. Calls are serialized: the port is a single stream.
#[derive(Debug)]
pub struct GuestAgent {
    socket: PathBuf,
    lock: Mutex<()>,
}

impl GuestAgent {
    pub fn new(socket: PathBuf) -> Self {
        GuestAgent {
            socket,
            lock: Mutex::new(()),
        }
    }

    /// Whether an agent answers in the guest.
    pub async fn ping(&self) -> bool {
        self.call("guest-ping", None, PING_TIMEOUT).await.is_ok()
    }

    /// The guest's network interfaces and addresses (loopback left out).
    pub async fn interfaces(&self) -> Result<Vec<GuestInterface>, AgentError> {
        let reply = self
            .call("guest-network-get-interfaces", None, COMMAND_TIMEOUT)
            .await?;
        Ok(parse_interfaces(&reply))
    }

    /// Freezes the guest's file systems (consistent snapshots); returns how many.
    pub async fn freeze(&self) -> Result<u64, AgentError> {
        let reply = self
            .call("guest-fsfreeze-freeze", None, COMMAND_TIMEOUT)
            .await?;
        Ok(reply.as_u64().unwrap_or(0))
    }

    pub async fn thaw(&self) -> Result<u64, AgentError> {
        let reply = self
            .call("guest-fsfreeze-thaw", None, COMMAND_TIMEOUT)
            .await?;
        Ok(reply.as_u64().unwrap_or(0))
    }

    async fn call(
        &self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, AgentError> {
        let _one_at_a_time = self.lock.lock().await;
        tokio::time::timeout(limit, self.converse(command, arguments))
            .await
            .map_err(|_| AgentError::Timeout)?
    }

    async fn converse(&self, command: &str, arguments: Option<Value>) -> Result<Value, AgentError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                AgentError::NoChannel
            } else {
                AgentError::Io(e)
            }
        })?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let id: u32 = rand_id();
        let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        write.write_all(format!("{sync}\n").as_bytes()).await?;
        // Skip everything up to our sync's answer.
        loop {
            let line = read_line(&mut lines).await?;
            if let Ok(reply) = serde_json::from_str::<Value>(line.trim()) {
                if reply.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
                    break;
                }
            }
        }
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        write.write_all(format!("{request}\n").as_bytes()).await?;
        let line = read_line(&mut lines).await?;
        let reply: Value =
            serde_json::from_str(line.trim()).map_err(|e| AgentError::Protocol(e.to_string()))?;
        if let Some(error) = reply.get("error") {
            return Err(AgentError::Refused {
                command: command.to_string(),
                message: error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_string(),
            });
        }
        reply
            .get("return")
            .cloned()
            .ok_or_else(|| AgentError::Protocol("an answer without a return value".into()))
    }
}

async fn read_line(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<String, AgentError> {
    let mut buf = Vec::new();
    loop {
        let chunk = lines.fill_buf().await?;
        if chunk.is_empty() {
            return Err(AgentError::Protocol("the agent's port closed".into()));
        }
        if let Some(end) = chunk.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&chunk[..end]);
            lines.consume(end + 1);
            // The sync answer is preceded by a raw 0xFF byte (never part of UTF-8 JSON).
            buf.retain(|b| *b != 0xff);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        lines.consume(n);
        if buf.len() > MAX_LINE {
            return Err(AgentError::Protocol("a line longer than 64 KiB".into()));
        }
    }
}

/// A sync id that a stale answer is unlikely to carry.
fn rand_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// `guest-network-get-interfaces` to interfaces with `addr/prefix` strings; loopback dropped.
pub fn parse_interfaces(reply: &Value) -> Vec<GuestInterface> {
    let Some(list) = reply.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|iface| {
            let name = iface.get("name")?.as_str()?.to_string();
            if name == "lo" {
                return None;
            }
            let addresses = iface
                .get("ip-addresses")
                .and_then(Value::as_array)
                .map(|addrs| {
                    addrs
                        .iter()
                        .filter_map(|a| {
                            let ip = a.get("ip-address")?.as_str()?;
                            let prefix = a.get("prefix")?.as_u64()?;
                            Some(format!("{ip}/{prefix}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(GuestInterface {
                name,
                mac: iface
                    .get("hardware-address")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                addresses,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_list_addresses_with_prefixes_without_loopback() {
        let reply = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:12:34:56",
             "ip-addresses": [{"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24},
                              {"ip-address": "fec0::5054:ff:fe12:3456", "ip-address-type": "ipv6", "prefix": 64}]}
        ]);
        let ifaces = parse_interfaces(&reply);
        assert_eq!(ifaces.len(), 1);
        assert_eq!(
            ifaces[0].addresses,
            ["10.0.2.15/24", "fec0::5054:ff:fe12:3456/64"]
        );
        assert_eq!(ifaces[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    }

    /// A fake agent on a socket: answers the sync (after stale junk) and one command.
    #[tokio::test]
    async fn a_conversation_skips_stale_answers_and_reads_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let sync: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            let id = sync["arguments"]["id"].clone();
            write.write_all(b"{\"return\": {}}\n").await.unwrap(); // stale
                                                                   // The real agent sends a raw 0xFF byte before the sync answer.
            let mut answer = vec![0xff];
            answer.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
            write.write_all(&answer).await.unwrap();
            let _ping = lines.next_line().await.unwrap().unwrap();
            write.write_all(b"{\"return\": {}}\n").await.unwrap();
        });
        let agent = GuestAgent::new(path);
        assert!(agent.ping().await);
    }

    #[tokio::test]
    async fn a_guest_without_an_agent_is_a_quick_no() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap(); // accepts, never answers
        let started = std::time::Instant::now();
        assert!(!GuestAgent::new(path).ping().await);
        assert!(started.elapsed() < Duration::from_secs(2));
        let missing = GuestAgent::new(dir.path().join("none.sock"));
        assert!(matches!(
            missing.call("guest-ping", None, PING_TIMEOUT).await,
            Err(AgentError::NoChannel)
        ));
    }
}
