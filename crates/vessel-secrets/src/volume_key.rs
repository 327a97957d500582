//! Disk encryption keys.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::SecretError;

const LEN: usize = 32;

/// A volume's disk encryption key: 32 random bytes, one per volume.
///
/// Zeroized on drop; `Debug` prints `VolumeKey(<redacted>)`; there is no `Display`, `Clone` or
/// `Serialize`. To store it, wrap it: `master.wrap(key.expose_bytes(), &volume_aad(pool, name))`;
/// to hand it to qemu-img or QEMU, use [`SecretPipe::for_volume_key`](crate::SecretPipe::for_volume_key).
pub struct VolumeKey(Zeroizing<[u8; LEN]>);

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VolumeKey(<redacted>)")
    }
}

impl VolumeKey {
    /// Length of a volume key in bytes.
    pub const LEN: usize = LEN;

    /// A new random key.
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = Zeroizing::new([0u8; LEN]);
        crate::random_bytes(key.as_mut())?;
        Ok(Self(key))
    }

    /// A key from its bytes, e.g. what [`MasterKey::unwrap`](crate::MasterKey::unwrap) returned.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != LEN {
            return Err(SecretError::KeyLength {
                expected: LEN,
                got: bytes.len(),
            });
        }
        // Copied straight into zeroizing storage, leaving no stray copy on the stack.
        let mut key = Zeroizing::new([0u8; LEN]);
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The raw key, for wrapping. Do not log it, store it or put it in an argument.
    pub fn expose_bytes(&self) -> &[u8; LEN] {
        &self.0
    }

    /// The LUKS passphrase QEMU is given for this key: its standard base64 (44 characters,
    /// the key's full 256 bits). QEMU's LUKS driver reads its `key-secret` as UTF-8 text and
    /// refuses arbitrary bytes ("Data from secret ... is not valid UTF-8"), so the raw key
    /// cannot be used directly. qemu-img and QEMU must both get exactly this text, which
    /// [`SecretPipe::for_volume_key`](crate::SecretPipe::for_volume_key) provides.
    pub fn luks_passphrase(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(LEN.div_ceil(3) * 4));
        BASE64.encode_string(self.0.as_ref(), &mut text);
        text
    }
}

/// The associated data that binds a wrapped volume key to its volume: `volume:<pool>/<name>`.
/// A wrapped key copied to another volume's record fails to unwrap. (Volumes cannot be renamed;
/// a rename would have to re-wrap the key under the new name.)
pub fn volume_aad(pool: &str, volume: &str) -> Vec<u8> {
    format!("volume:{pool}/{volume}").into_bytes()
}
