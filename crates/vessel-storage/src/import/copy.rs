//! The copy pipeline: a producer (a file-reading thread or a download) fills 4 MiB buffers, a
//! writer thread writes them to the destination skipping all-zero 4 KiB blocks (so sparse images
//! stay sparse), and a hasher thread computes the SHA-256 of every byte, zeros included, then
//! hands the buffer back to the producer. Reading, writing and hashing of different buffers
//! overlap, which matters on a host with few cores: SHA-256 alone is about as fast as a page
//! cache copy.
//!
//! Stopping: when the [`Drain`] is dropped (its future was dropped) the threads stop at their
//! next buffer; the destination file is the caller's temporary file, removed by the caller.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// Bytes per buffer.
pub(crate) const BUF_SIZE: usize = 4 << 20;
/// Buffers in flight: one being filled, one being written, one being hashed, one spare.
const BUFFERS: usize = 4;
/// The granularity of hole punching by skipping: the usual filesystem block.
const ZERO_BLOCK: usize = 4096;

/// A filled buffer: its first `len` bytes are data.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

/// Where a producer gets empty buffers and sends filled ones.
pub(crate) struct Feed {
    free: mpsc::Receiver<Vec<u8>>,
    filled: mpsc::Sender<Chunk>,
}

impl Feed {
    /// An empty buffer of [`BUF_SIZE`] bytes; `None` when the writer has stopped.
    pub(crate) async fn buffer(&mut self) -> Option<Vec<u8>> {
        if self.filled.is_closed() {
            return None;
        }
        self.free.recv().await
    }

    /// Hands the first `len` bytes of `buf` to the writer; `false` when it has stopped.
    pub(crate) async fn send(&mut self, buf: Vec<u8>, len: usize) -> bool {
        self.filled.send(Chunk { buf, len }).await.is_ok()
    }

    fn blocking_buffer(&mut self) -> Option<Vec<u8>> {
        if self.filled.is_closed() {
            return None;
        }
        self.free.blocking_recv()
    }

    fn blocking_send(&mut self, buf: Vec<u8>, len: usize) -> bool {
        self.filled.blocking_send(Chunk { buf, len }).is_ok()
    }
}

/// The writing end: how far the writer got, and its result.
pub(crate) struct Drain {
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writer: oneshot::Receiver<io::Result<u64>>,
    digest: oneshot::Receiver<[u8; 32]>,
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drain {
    /// Bytes written so far (holes included).
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The flag the threads of this pipeline stop on.
    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for the writer (which sets the file's length and syncs it) and the hasher, once the
    /// [`Feed`] has been dropped. Returns the bytes written and their SHA-256.
    pub(crate) async fn finish(mut self) -> io::Result<(u64, [u8; 32])> {
        let lost = || io::Error::other("the copy thread ended unexpectedly");
        let bytes = (&mut self.writer).await.map_err(|_| lost())??;
        let digest = (&mut self.digest).await.map_err(|_| lost())?;
        Ok((bytes, digest))
    }
}

/// Starts the writer and hasher threads that write into `dest` (a new, empty file) and hash.
pub(crate) fn pipeline(dest: File) -> io::Result<(Feed, Drain)> {
    let (free_tx, free_rx) = mpsc::channel(BUFFERS);
    for _ in 0..BUFFERS {
        free_tx
            .try_send(vec![0u8; BUF_SIZE])
            .expect("the channel holds every buffer");
    }
    let (filled_tx, filled_rx) = mpsc::channel::<Chunk>(BUFFERS);
    let (hash_tx, hash_rx) = std_mpsc::sync_channel::<Chunk>(BUFFERS);
    let (writer_tx, writer_rx) = oneshot::channel();
    let (digest_tx, digest_rx) = oneshot::channel();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    std::thread::Builder::new()
        .name("vessel-hash".to_string())
        .spawn(move || {
            let mut hasher = Sha256::new();
            while let Ok(chunk) = hash_rx.recv() {
                hasher.update(&chunk.buf[..chunk.len]);
                // The producer may be gone (finished or cancelled); the buffer is then freed.
                let _ = free_tx.blocking_send(chunk.buf);
            }
            let _ = digest_tx.send(hasher.finalize().into());
        })?;

    let (w, s) = (written.clone(), stop.clone());
    std::thread::Builder::new()
        .name("vessel-write".to_string())
        .spawn(move || {
            let result = write_all(dest, filled_rx, hash_tx, &w, &s);
            let _ = writer_tx.send(result);
        })?;

    Ok((
        Feed {
            free: free_rx,
            filled: filled_tx,
        },
        Drain {
            written,
            stop,
            writer: writer_rx,
            digest: digest_rx,
        },
    ))
}

fn write_all(
    dest: File,
    mut filled: mpsc::Receiver<Chunk>,
    hash: std_mpsc::SyncSender<Chunk>,
    written: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<u64> {
    let stopped = || io::Error::new(io::ErrorKind::Interrupted, "the copy was cancelled");
    let mut offset = 0u64;
    while let Some(chunk) = filled.blocking_recv() {
        if stop.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        write_sparse(&dest, offset, &chunk.buf[..chunk.len])?;
        start_writeback(&dest, offset, chunk.len as u64);
        offset += chunk.len as u64;
        written.store(offset, Ordering::Relaxed);
        if hash.send(chunk).is_err() {
            return Err(io::Error::other("the hashing thread ended unexpectedly"));
        }
    }
    if stop.load(Ordering::SeqCst) {
        return Err(stopped());
    }
    // Trailing zeros were skipped: the length makes them a hole at the end.
    dest.set_len(offset)?;
    // Durable before it is published: a crash must not leave a named volume with lost data.
    dest.sync_all()?;
    Ok(offset)
}

/// Starts writing `len` bytes at `offset` to the disk without waiting for it, so that the final
/// `fsync` finds little left to do and the disk works while the copy goes on (otherwise all of a
/// big image's dirty pages would be flushed at the end, after the copy). Only a hint: errors are
/// ignored, and `fsync` reports any that matter.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor belongs to
    // `file`, which is open for the duration of the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Writes `data` at `offset`, leaving all-zero blocks unwritten (holes in a new file). Runs of
/// non-zero blocks are written with one call each.
fn write_sparse(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + ZERO_BLOCK).min(data.len());
        if is_zero(&data[pos..end]) {
            if let Some(start) = run_start.take() {
                file.write_all_at(&data[start..pos], offset + start as u64)?;
            }
        } else if run_start.is_none() {
            run_start = Some(pos);
        }
        pos = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// Whether every byte is zero: a quick look at the first 16 bytes (non-zero data usually fails
/// there), then an OR over the block that the compiler vectorizes.
fn is_zero(block: &[u8]) -> bool {
    let head = block.len().min(16);
    if block[..head].iter().any(|&b| b != 0) {
        return false;
    }
    block.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// How a producer ended, when not with all its bytes delivered.
#[derive(Debug)]
pub(crate) enum FeedError {
    /// Reading the source failed; the message says how.
    Source(String),
    /// The source is larger than the limit.
    TooLarge { limit: u64 },
    /// The writer stopped (its error is what [`Drain::finish`] returns) or the copy was cancelled.
    SinkGone,
}

/// Reads `src` to its end into `feed` on a thread of its own. The result is the number of bytes
/// read.
pub(crate) fn read_file(
    mut src: File,
    mut feed: Feed,
    stop: Arc<AtomicBool>,
    max_bytes: Option<u64>,
) -> io::Result<oneshot::Receiver<Result<u64, FeedError>>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("vessel-read".to_string())
        .spawn(move || {
            let mut total = 0u64;
            let result = loop {
                if stop.load(Ordering::SeqCst) {
                    break Err(FeedError::SinkGone);
                }
                let Some(mut buf) = feed.blocking_buffer() else {
                    break Err(FeedError::SinkGone);
                };
                let n = match fill(&mut src, &mut buf) {
                    Ok(n) => n,
                    Err(e) => break Err(FeedError::Source(e.to_string())),
                };
                if n == 0 {
                    break Ok(total);
                }
                total += n as u64;
                if let Some(limit) = max_bytes.filter(|limit| total > *limit) {
                    break Err(FeedError::TooLarge { limit });
                }
                if !feed.blocking_send(buf, n) {
                    break Err(FeedError::SinkGone);
                }
            };
            drop(feed);
            let _ = tx.send(result);
        })?;
    Ok(rx)
}

/// Reads until `buf` is full or the source ends.
fn fill(src: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// SHA-256 of a whole file, read in [`BUF_SIZE`] pieces on a blocking thread.
pub(crate) async fn hash_file(path: &std::path::Path) -> io::Result<(u64, [u8; 32])> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = File::open(&path)?;
        let mut buf = vec![0u8; BUF_SIZE];
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        loop {
            let n = fill(&mut file, &mut buf)?;
            if n == 0 {
                return Ok((total, hasher.finalize().into()));
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_data_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[5000] = 1; // block 1
        data[(1 << 20) - 1] = 2; // the last block
        write_sparse(&file, 0, &data).unwrap();
        file.set_len(2 << 20).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[..1 << 20], &data[..]);
        assert!(back[1 << 20..].iter().all(|&b| b == 0));
        // Two data blocks allocated, not 512.
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 64 * 1024);
    }

    #[test]
    fn is_zero_sees_any_set_byte() {
        let mut block = vec![0u8; ZERO_BLOCK];
        assert!(is_zero(&block));
        block[4095] = 0x80;
        assert!(!is_zero(&block));
        assert!(is_zero(&[]));
    }

    #[tokio::test]
    async fn a_file_is_copied_and_hashed_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        // Not a multiple of the buffer size, with a zero stretch in the middle.
        let mut data: Vec<u8> = (0..(BUF_SIZE * 2 + 12345))
            .map(|i| (i % 251) as u8 | 1)
            .collect();
        data[BUF_SIZE..BUF_SIZE + 65536].fill(0);
        std::fs::write(&src, &data).unwrap();
        let dst = dir.path().join("dst");
        let (feed, drain) = pipeline(File::create(&dst).unwrap()).unwrap();
        let read = read_file(File::open(&src).unwrap(), feed, drain.stop_flag(), None)
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        let (written, digest) = drain.finish().await.unwrap();
        assert_eq!((read, written), (data.len() as u64, data.len() as u64));
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let expected: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(digest, expected);
        assert_eq!(
            hash_file(&dst).await.unwrap(),
            (data.len() as u64, expected)
        );
    }
}
