use std::io;
use std::path::PathBuf;

use crate::master::KeyId;

/// What went wrong with a key or a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "master key file {} can be read or written by other users (mode {mode:04o}); it must be \
         accessible to its owner only: run `chmod 600 {}`",
        path.display(), path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error(
        "master key file {} belongs to uid {owner}, but Vessel runs as uid {uid}; another user \
         could have read or replaced it: run `chown {uid} {}` if the file is trusted",
        path.display(), path.display()
    )]
    WrongOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "master key file {} is not a Vessel master key: {reason}; restore it from a backup \
         (a new key cannot unwrap the secrets the old one wrapped)",
        path.display()
    )]
    MalformedKeyFile { path: PathBuf, reason: String },
    #[error(
        "pending master key {} exists but the current key {} does not; a key rotation was \
         interrupted and the current key was lost: restore {} from a backup",
        pending.display(), current.display(), current.display()
    )]
    PendingWithoutCurrent { current: PathBuf, pending: PathBuf },
    #[error(
        "this secret was wrapped by master key {needed}, but the loaded master key(s) are {}; \
         load the key file whose id is {needed} (restore it from a backup if it was replaced)",
        available.iter().map(KeyId::as_str).collect::<Vec<_>>().join(", ")
    )]
    WrongKey {
        needed: KeyId,
        available: Vec<KeyId>,
    },
    #[error(
        "the wrapped secret does not authenticate for {owner:?}: it was altered, or it belongs to \
         another owner"
    )]
    NotAuthentic { owner: String },
    #[error("wrapped secret has version {0}; this Vessel understands version 1 only")]
    UnsupportedVersion(u32),
    #[error("wrapped secret is malformed: {0}")]
    MalformedSecret(String),
    #[error("a volume key is {expected} bytes, but the secret has {got}")]
    KeyLength { expected: usize, got: usize },
    #[error("no master key rotation is in progress")]
    NoRotation,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

impl SecretError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SecretError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
