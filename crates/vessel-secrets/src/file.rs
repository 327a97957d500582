//! Key files: created atomically with mode 0600, loaded only when private and well-formed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::SecretError;

/// The directory a key file lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Prefix of the temporary files a key file is built in: `.NAME.tmp-`.
pub(crate) fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

/// Creates `path` holding `bytes`, all or nothing, unless it exists already.
///
/// The bytes go to a temporary file in the same directory, created with mode 0600 (never wider,
/// not even for a moment) and `O_EXCL`, then fsynced; the file is then hard-linked to `path`,
/// which fails instead of replacing a key that another process created meanwhile; finally the
/// directory is fsynced so that the new name survives a crash. A crash leaves either no `path` or
/// a complete one. Returns `false` when `path` already existed (nothing was written to it).
pub(crate) fn create_private_file(path: &Path, bytes: &[u8]) -> Result<bool, SecretError> {
    let dir = parent_dir(path);
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SecretError::io("create directory", &dir, e))?;
    }
    let mut suffix = [0u8; 8];
    crate::random_bytes(&mut suffix)?;
    let temp = dir.join(format!("{}{}", temp_prefix(path), hex(&suffix)));
    let result = write_and_link(&temp, path, bytes);
    // After a successful link the temporary name is a second link to the key; remove it in
    // every case (a failed write leaves a partial file to remove too).
    let _ = fs::remove_file(&temp);
    let created = result?;
    sync_dir(&dir)?;
    Ok(created)
}

fn write_and_link(temp: &Path, path: &Path, bytes: &[u8]) -> Result<bool, SecretError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(temp)
        .map_err(|e| SecretError::io("create", temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| SecretError::io("write", temp, e))?;
    drop(file);
    match fs::hard_link(temp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A filesystem without hard links: rename, which would replace a file created since the
        // caller looked. The daemon holds its lock while it creates keys, so nobody else does.
        Err(_) if !path.exists() => fs::rename(temp, path)
            .map(|()| true)
            .map_err(|e| SecretError::io("create", path, e)),
        Err(_) => Ok(false),
    }
}

/// Reads a key file of exactly `len` bytes that only its owner, this process's user, can access.
/// Checks are made on the opened file, so a file swapped in between check and read is caught.
pub(crate) fn read_private_file(
    path: &Path,
    len: usize,
    buf: &mut [u8],
) -> Result<(), SecretError> {
    debug_assert_eq!(buf.len(), len);
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| SecretError::io("open master key file", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| SecretError::io("inspect", path, e))?;
    if !meta.is_file() {
        return Err(malformed(path, "it is not a regular file"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let uid = effective_uid();
    if meta.uid() != uid {
        return Err(SecretError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    if meta.len() != len as u64 {
        return Err(malformed(
            path,
            format!(
                "it is {} bytes long, but a master key is exactly {len} bytes (truncated or not a \
                 key file)",
                meta.len()
            ),
        ));
    }
    read_exact_len(&mut file, buf).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => malformed(path, e.to_string()),
        _ => SecretError::io("read", path, e),
    })
}

/// Fills `buf` and checks that the file ends right after it (it may have changed since fstat).
fn read_exact_len(file: &mut File, buf: &mut [u8]) -> io::Result<()> {
    file.read_exact(buf)?;
    let mut extra = [0u8; 1];
    if file.read(&mut extra)? != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it grew while being read",
        ));
    }
    Ok(())
}

/// Replaces `to` with `from` atomically and makes the change durable.
pub(crate) fn replace(from: &Path, to: &Path) -> Result<(), SecretError> {
    fs::rename(from, to).map_err(|e| SecretError::io("rename", from, e))?;
    sync_dir(&parent_dir(to))
}

/// Removes temporary files that a crash during [`create_private_file`] left next to `path`.
pub(crate) fn remove_stale_temp_files(path: &Path) -> Result<(), SecretError> {
    let dir = parent_dir(path);
    let prefix = temp_prefix(path);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SecretError::io("list", &dir, e)),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let stale = entry.path();
            fs::remove_file(&stale).map_err(|e| SecretError::io("remove", &stale, e))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SecretError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SecretError::io("sync directory", dir, e))
}

fn malformed(path: &Path, reason: impl Into<String>) -> SecretError {
    SecretError::MalformedKeyFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
