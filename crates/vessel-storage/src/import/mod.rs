//! Bringing disk images into a pool and taking volumes out of it: the engine behind
//! `vessel image import NAME FILE|URL [--sha256 HEX]` and `vessel volume export|import`.
//!
//! An import ([`StoragePool::import_volume`](crate::StoragePool::import_volume)) streams the
//! source (a file on the daemon's host or an `http(s)://` URL) into a hidden temporary file in
//! the pool while computing its SHA-256 in the same pass, then checks the digest, validates the
//! image, converts it if another format was asked for, and publishes it under its name. An
//! export ([`StoragePool::export_volume`](crate::StoragePool::export_volume)) writes a volume as
//! one standalone qcow2 file.
//!
//! # All or nothing, and cancellation
//!
//! Every partial result lives in a `.vessel-tmp-*` file that is removed when the operation's
//! future is dropped, whatever await point it was at, so a failed or cancelled import leaves no
//! partial volume and the name stays free. Two ways to cancel, with the same effect:
//! - drop the future (the copying threads see it within one 4 MiB buffer and stop; a running
//!   qemu-img is killed);
//! - trip a [`CancelToken`] passed in [`ImportOptions::cancel`] / [`ExportOptions::cancel`]: the
//!   call then returns an error that says it was cancelled.
//!
//! # What is accepted
//!
//! Vessel stores raw and qcow2 only, and an image must be self-contained. After the copy the
//! content is judged, not the name or the server's content type:
//! - qcow2 (magic `QFI\xfb`): `qemu-img info` and `qemu-img check` must pass: no backing file
//!   (a backing file name would make the host open an arbitrary file), no external data file, not
//!   encrypted, not corrupt and not truncated (metadata must not point past the end of the file).
//! - Other known container formats are refused with a hint to convert them first: VMDK, VDI,
//!   VHDX, VHD (dynamic), QED, qcow version 1, and archives or compressed files (gzip, xz, zstd,
//!   bzip2, zip, tar) that people often download instead of the image inside. A LUKS container is
//!   refused too: Vessel imports unencrypted images (volumes are encrypted with their own keys).
//! - Everything else is raw, which includes ISO 9660 (installer and cloud-init ISOs are valid
//!   raw images). A raw image must be a non-empty whole number of 512-byte sectors, and must not
//!   look like text: the heuristic refuses a file whose first 4 KiB (or the whole file if shorter)
//!   are valid UTF-8 with no NUL byte and no control character other than tab, newline, carriage
//!   return, form feed and escape. Real disks start with boot code, a partition table or zeros,
//!   none of which passes; an HTML error page, a `404 Not Found` body, a checksum list or a VMDK
//!   descriptor does. This is deliberately conservative: it only refuses what is surely not a
//!   disk.
//!
//! # Errors
//!
//! Problems with what the caller asked for or gave (a bad URL or checksum, a download that failed
//! or was cut, a file that is not an image, a digest mismatch, a cancellation) are
//! [`PoolError::InvalidRequest`](crate::PoolError::InvalidRequest) with a message that says what
//! was wrong and what to do; a full pool is [`PoolError::NoSpace`](crate::PoolError::NoSpace).

pub(crate) mod address;
pub(crate) mod copy;
pub mod http;
pub(crate) mod sniff;
pub(crate) mod validate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::format::Format;
use crate::pool::{PoolError, VolumeInfo};
use vessel_secrets::VolumeKey;

/// Where an import's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    /// A file on the daemon's host (read with the daemon's rights: the caller decides who may
    /// name host files).
    File(PathBuf),
    /// An `http://` or `https://` URL; other schemes are refused.
    Url(String),
}

impl std::fmt::Display for ImportSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportSource::File(path) => write!(f, "{}", path.display()),
            ImportSource::Url(url) => f.write_str(url),
        }
    }
}

/// The default for [`ImportOptions::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a download may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects a download follows at most.
pub const MAX_REDIRECTS: usize = 5;

/// How to import. `ImportOptions::default()` keeps the source's format, checks no digest and
/// makes a writable volume.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImportOptions {
    /// The SHA-256 the source's bytes must have: 64 hex digits, any case.
    pub expected_sha256: Option<String>,
    /// Store the volume in this format; `None` keeps the source's (raw or qcow2).
    pub format: Option<Format>,
    /// Publish the volume's file with mode 0444: an image, which VMs use through linked or full
    /// clones. Resizing it is refused ([`VolumeInfo::read_only`]).
    pub read_only: bool,
    /// Refuse sources larger than this many bytes.
    pub max_bytes: Option<u64>,
    /// A download that receives no byte for this long fails; `None` means
    /// [`DEFAULT_STALL_TIMEOUT`] (60 s).
    pub stall_timeout: Option<Duration>,
    /// Cancels the import when tripped (dropping the future does the same).
    pub cancel: Option<CancelToken>,
    /// The addresses a URL source may reach, redirects included. The default reaches any:
    /// the caller decides (the daemon passes `UrlPolicy::public_only()` or its configured
    /// networks for callers who may not reach the host's own networks).
    pub url_policy: address::UrlPolicy,
    /// Copy the bytes as they are, without judging them as a disk image (kernels and initrds,
    /// which are files QEMU loads, not disks). The result is a raw volume of any size.
    pub opaque: bool,
}

/// How to export. `ExportOptions::default()` writes a compressed qcow2 and refuses to replace an
/// existing file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportOptions<'a> {
    /// Compress the qcow2's clusters (`qemu-img convert -c`): smaller, slower to write; reading
    /// it back is transparent.
    pub compress: bool,
    /// Replace `dest` if it exists.
    pub overwrite: bool,
    /// The key of an encrypted volume. The export is then written **decrypted** (plain qcow2):
    /// whoever gets the file reads the data. Without a key an encrypted volume cannot be
    /// exported.
    pub key: Option<&'a VolumeKey>,
    /// Cancels the export when tripped (dropping the future does the same).
    pub cancel: Option<CancelToken>,
}

impl Default for ExportOptions<'_> {
    fn default() -> Self {
        Self {
            compress: true,
            overwrite: false,
            key: None,
            cancel: None,
        }
    }
}

/// What an import or export is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportPhase {
    /// Receiving a URL's body.
    Downloading,
    /// Reading a file source.
    Copying,
    /// Checking the digest and the image (import), or hashing the written file (export).
    Verifying,
    /// `qemu-img convert` into the target format (import) or into the exported qcow2 (export).
    Converting,
}

/// Progress of one phase: `done` of `total` bytes (`total` is `None` when unknown, e.g. a
/// download without Content-Length). Each phase starts with a report and its `done` only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportProgress {
    pub phase: ImportPhase,
    pub done: u64,
    pub total: Option<u64>,
}

impl ImportProgress {
    /// `done / total` in percent, when the total is known.
    pub fn percent(&self) -> Option<f64> {
        match self.total {
            Some(0) => Some(100.0),
            Some(total) => Some((self.done as f64 / total as f64 * 100.0).min(100.0)),
            None => None,
        }
    }
}

/// A finished import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedVolume {
    pub info: VolumeInfo,
    /// SHA-256 of the source's bytes, lowercase hex (also when no digest was expected, so the
    /// caller can record it).
    pub sha256: String,
    /// Bytes read from the source.
    pub source_bytes: u64,
}

/// A finished export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    pub path: PathBuf,
    /// Bytes of the written file.
    pub size: u64,
    /// SHA-256 of the written file, lowercase hex (what `sha256sum` prints).
    pub sha256: String,
}

/// Cancels an import or export from elsewhere (the daemon's operation cancel). Cloning shares
/// the token.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Trips the token; every operation holding it stops and cleans up.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Completes once the token is tripped.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Runs `work` until it finishes or `cancel` trips; a tripped token drops `work` (which removes
/// its temporary files) and returns a cancellation error.
pub(crate) async fn cancellable<T>(
    cancel: Option<&CancelToken>,
    what: &str,
    work: impl std::future::Future<Output = Result<T, PoolError>>,
) -> Result<T, PoolError> {
    let Some(cancel) = cancel else {
        return work.await;
    };
    tokio::select! {
        result = work => result,
        () = cancel.cancelled() => Err(PoolError::InvalidRequest(format!(
            "{what} was cancelled; nothing was kept"
        ))),
    }
}

/// Parses an expected digest: 64 hex digits in any case, returned lowercase.
pub(crate) fn parse_sha256(hex: &str) -> Result<String, PoolError> {
    let trimmed = hex.trim();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(trimmed.to_ascii_lowercase());
    }
    Err(PoolError::InvalidRequest(format!(
        "{hex:?} is not a SHA-256 digest: give 64 hexadecimal digits, as `sha256sum FILE` \
         prints them"
    )))
}

/// Lowercase hex of a digest.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_64_hex_digits_in_any_case() {
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(parse_sha256(upper).unwrap(), upper.to_ascii_lowercase());
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            let err = parse_sha256(bad).unwrap_err().to_string();
            assert!(err.contains("64 hexadecimal digits"), "{err}");
        }
    }

    #[test]
    fn progress_percent_needs_a_total() {
        let mut p = ImportProgress {
            phase: ImportPhase::Copying,
            done: 50,
            total: Some(200),
        };
        assert_eq!(p.percent(), Some(25.0));
        p.total = None;
        assert_eq!(p.percent(), None);
    }

    #[tokio::test]
    async fn a_tripped_token_ends_the_work() {
        let token = CancelToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            t.cancel();
        });
        let err = cancellable(Some(&token), "import of \"x\"", async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        // Already tripped: returns at once.
        token.cancelled().await;
    }
}
