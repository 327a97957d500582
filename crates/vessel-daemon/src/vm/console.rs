//! Serial consoles: every byte a VM prints goes to a size-capped, rotated log file and to whoever
//! is attached; attached users' keystrokes go back to the VM.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

/// A VM's console: its log and its live subscribers.
pub struct ConsoleHub {
    log: Mutex<RotatingLog>,
    output: broadcast::Sender<Bytes>,
    input: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
}

impl ConsoleHub {
    pub fn new(dir: &Path, max_bytes: u64) -> Arc<ConsoleHub> {
        let (output, _) = broadcast::channel(256);
        Arc::new(ConsoleHub {
            log: Mutex::new(RotatingLog::new(dir.join("console.log"), max_bytes)),
            output,
            input: Mutex::new(None),
        })
    }

    /// Pumps a freshly connected console stream until it closes (QEMU exited).
    pub fn attach(self: &Arc<Self>, stream: UnixStream) {
        let (mut reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        *self.input.lock() = Some(tx);
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => hub.record(Bytes::copy_from_slice(&buf[..n])),
                }
            }
            hub.input.lock().take();
        });
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if writer.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
    }

    fn record(&self, chunk: Bytes) {
        let mut log = self.log.lock();
        if let Err(e) = log.append(&chunk) {
            tracing::warn!(error = %e, "console log write failed");
        }
        // Sent under the lock so that a reader who snapshots the log and subscribes under the
        // same lock sees every byte exactly once.
        let _ = self.output.send(chunk);
    }

    /// The logged output so far (previous file, then current) and a subscription to what follows.
    pub fn snapshot_and_subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let log = self.log.lock();
        (log.read_all(), self.output.subscribe())
    }

    /// Sends keystrokes to the VM; false when no QEMU is connected.
    pub fn send_input(&self, bytes: Bytes) -> bool {
        match &*self.input.lock() {
            Some(tx) => tx.send(bytes).is_ok(),
            None => false,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.input.lock().is_some()
    }
}

/// `console.log` capped at `max_bytes`; when full it becomes `console.log.1` (replacing the
/// older one), so a VM's console costs at most twice the cap on disk.
struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    fn new(path: PathBuf, max_bytes: u64) -> Self {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        RotatingLog {
            path,
            max_bytes,
            file: None,
            size,
        }
    }

    fn rotated_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        PathBuf::from(p)
    }

    fn append(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if self.size + chunk.len() as u64 > self.max_bytes && self.size > 0 {
            self.file = None;
            std::fs::rename(&self.path, self.rotated_path())?;
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)?,
            );
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    fn read_all(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for path in [self.rotated_path(), self.path.clone()] {
            if let Ok(mut file) = File::open(&path) {
                let _ = file.seek(SeekFrom::Start(0));
                let _ = file.read_to_end(&mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_at_the_cap_and_keeps_the_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::new(dir.path().join("console.log"), 10);
        for chunk in [b"aaaa".as_slice(), b"bbbb", b"cccc", b"dddd"] {
            log.append(chunk).unwrap();
        }
        assert_eq!(log.read_all(), b"aaaabbbbccccdddd");
        log.append(b"eeee").unwrap();
        assert_eq!(
            log.read_all(),
            b"ccccddddeeee",
            "the oldest rotation is dropped"
        );
        let current = std::fs::read(dir.path().join("console.log")).unwrap();
        assert!(current.len() <= 10);
        assert!(
            std::fs::metadata(dir.path().join("console.log.1"))
                .unwrap()
                .len()
                <= 10
        );
    }

    #[tokio::test]
    async fn attached_stream_is_logged_and_broadcast_and_input_flows_back() {
        let dir = tempfile::tempdir().unwrap();
        let hub = ConsoleHub::new(dir.path(), 1 << 20);
        let (daemon_side, mut vm_side) = UnixStream::pair().unwrap();
        let (_, mut rx) = hub.snapshot_and_subscribe();
        hub.attach(daemon_side);
        vm_side.write_all(b"login: ").await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"login: "));
        assert!(hub.send_input(Bytes::from_static(b"root\n")));
        let mut buf = [0u8; 5];
        vm_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"root\n");
        let (logged, _) = hub.snapshot_and_subscribe();
        assert_eq!(logged, b"login: ");
    }
}
