//! Vessel's secrets.
//!
//! - [`MasterKey`]: 32 random bytes in a key file on the host (mode 0600, created at first
//!   start). It never encrypts data itself: it *wraps* (encrypts with AES-256-GCM) other secrets
//!   so that they can be stored, in the daemon's store or anywhere else, without being readable.
//! - [`WrappedSecret`]: a wrapped secret as stored: `{version, key_id, nonce, ciphertext}`. The
//!   key id names the master key that wrapped it; the associated data given to
//!   [`MasterKey::wrap`] (e.g. [`volume_aad`]`("default", "web")`) binds it to its owner, so a
//!   blob copied onto another owner's record does not unwrap.
//! - [`Keyring`]: the current master key plus, during a rotation, the pending one; unwraps by key
//!   id and carries out crash-safe master key rotation (see its docs).
//! - [`VolumeKey`]: a disk encryption key, zeroized on drop and never printed.
//! - [`SecretPipe`]: hands a secret to a child process (qemu-img, QEMU) through an inherited pipe,
//!   so that it is never on a command line, in the environment or in a file.
//!
//! Where each secret lives: the master key only in its file and in this process's memory;
//! volume keys in plain text only in memory (zeroized on drop) and in the pipe between Vessel and
//! the child; on disk and in the store only as [`WrappedSecret`]s.

mod error;
mod file;
mod keyring;
mod master;
mod pipe;
mod volume_key;

pub use error::SecretError;
pub use keyring::Keyring;
pub use master::{KeyId, MasterKey, WrappedSecret, WRAPPED_SECRET_VERSION};
pub use pipe::SecretPipe;
pub use volume_key::{volume_aad, VolumeKey};

/// Re-exported so callers can hold unwrapped secrets without depending on `zeroize` themselves.
pub use zeroize::Zeroizing;

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), SecretError> {
    getrandom::fill(buf).map_err(|e| SecretError::Random(e.to_string()))
}
