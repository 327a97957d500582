//! The audit signing key: an Ed25519 key in a private file, created on first use.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{hex, random_bytes, AuditError};

/// The key file holds the 32-byte secret as 64 hex digits and a newline: text, so that an operator
/// can tell it from other files, and a fixed length, so that a truncated file is refused.
const FILE_LEN: usize = 65;

/// The daemon's audit signing key.
pub struct AuditKey {
    signing: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("AuditKey")
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// A short id of a public key: the first 8 bytes of SHA-256 over it, in hex.
pub fn key_id(public_key: &VerifyingKey) -> String {
    let mut h = Sha256::new();
    h.update(b"vessel-audit-key-id\0");
    h.update(public_key.as_bytes());
    hex::encode(&h.finalize()[..8])
}

impl AuditKey {
    /// A new random key, not saved anywhere (tests, benchmarks).
    pub fn generate() -> Result<Self, AuditError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        random_bytes(secret.as_mut())?;
        Ok(Self::from_secret(&secret))
    }

    fn from_secret(secret: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(secret);
        let key_id = key_id(&signing.verifying_key());
        Self { signing, key_id }
    }

    /// Loads the key in `path`. The file must belong to this process's user and be inaccessible to
    /// group and others; anything else is refused, because whoever can read it can forge
    /// checkpoints.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let shown = path.display().to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| AuditError::KeyIo {
                path: shown.clone(),
                op: "open",
                source,
            })?;
        // Checked on the opened file, so a file swapped in after the check is not read.
        let meta = file.metadata().map_err(|source| AuditError::KeyIo {
            path: shown.clone(),
            op: "inspect",
            source,
        })?;
        let bad = |reason: String| AuditError::Key {
            path: shown.clone(),
            reason,
        };
        if !meta.is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(AuditError::KeyPermissions {
                path: shown.clone(),
                mode,
            });
        }
        let uid = effective_uid();
        if meta.uid() != uid {
            return Err(bad(format!(
                "it belongs to uid {}, not to this process's uid {uid}",
                meta.uid()
            )));
        }
        let mut text = Zeroizing::new(Vec::with_capacity(FILE_LEN + 1));
        // One byte more than a key file holds, to notice a longer file.
        (&mut file)
            .take(FILE_LEN as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|source| AuditError::KeyIo {
                path: shown.clone(),
                op: "read",
                source,
            })?;
        if text.len() != FILE_LEN || text[64] != b'\n' {
            return Err(bad(format!(
                "a key file is 64 hex digits and a newline ({FILE_LEN} bytes), this one is {} bytes",
                text.len()
            )));
        }
        let hex_text = std::str::from_utf8(&text[..64]).map_err(|_| bad("not hex".into()))?;
        let secret = Zeroizing::new(hex::decode::<32>(hex_text).map_err(bad)?);
        Ok(Self::from_secret(&secret))
    }

    /// Loads the key in `path`, creating it first if there is no such file (the first start).
    ///
    /// Creation is atomic: the key goes to a temporary file in the same directory, created with
    /// mode 0600 (never wider, not even for a moment), fsynced, then hard-linked to `path` (which
    /// fails rather than replacing a key that another process created meanwhile), and the
    /// directory is fsynced so that the name survives a crash.
    pub fn load_or_create(path: &Path) -> Result<Self, AuditError> {
        match Self::load(path) {
            Err(AuditError::KeyIo { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                let mut text = Zeroizing::new(hex::encode(&key.signing.to_bytes()).into_bytes());
                text.push(b'\n');
                if create_private_file(path, &text)? {
                    Ok(key)
                } else {
                    // Someone else created it first: theirs is the key.
                    Self::load(path)
                }
            }
            other => other,
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as 64 hex digits: what the daemon prints for offline verification.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let signature: Signature = self.signing.sign(message);
        signature.to_bytes()
    }
}

/// Parses a public key given as 64 hex digits (as printed by [`AuditKey::public_key_hex`]).
pub fn parse_public_key(hex_text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode::<32>(hex_text.trim())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

fn create_private_file(path: &Path, bytes: &[u8]) -> Result<bool, AuditError> {
    let io_err = |op: &'static str, p: &Path| {
        let path = p.display().to_string();
        move |source| AuditError::KeyIo { path, op, source }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create directory", &dir))?;
    }
    let mut suffix = [0u8; 8];
    random_bytes(&mut suffix)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", hex::encode(&suffix)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(io_err("create", &temp))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", &temp))?;
        match fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("link", path)(e)),
        }
    })();
    // After a link the temporary name is a second name of the key; remove it in every case.
    let _ = fs::remove_file(&temp);
    let created = result?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", &dir))?;
    Ok(created)
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}
