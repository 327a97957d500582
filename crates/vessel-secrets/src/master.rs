//! The host master key and the secrets it wraps.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::SecretError;
use crate::file;

/// The version [`MasterKey::wrap`] writes and the only one [`MasterKey::unwrap`] reads.
pub const WRAPPED_SECRET_VERSION: u32 = 1;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// Prefix of the associated data of every wrapped secret; versions the construction.
const AAD_DOMAIN: &[u8] = b"vessel-wrapped-secret\0v1\0";

/// Names a master key without revealing it: the first 8 bytes of SHA-256 over a domain-separated
/// encoding of the key, as 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret wrapped (AES-256-GCM) by a master key, as it is stored. Safe to store and to print:
/// without the master key it reveals nothing but its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedSecret {
    /// Format version, [`WRAPPED_SECRET_VERSION`].
    pub version: u32,
    /// The master key that wrapped it.
    pub key_id: KeyId,
    /// The 96-bit GCM nonce, base64.
    pub nonce: String,
    /// The encrypted secret followed by the 128-bit GCM tag, base64.
    pub ciphertext: String,
}

/// The host master key: 32 random bytes that wrap every other recoverable secret.
///
/// It lives in a file that only its owner can read (see [`MasterKey::load_or_create`]) and in
/// memory, zeroized on drop. `Debug` shows its id only.
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    id: KeyId,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

impl MasterKey {
    /// Length of the key and of its file, in bytes.
    pub const LEN: usize = KEY_LEN;

    /// A new random key (not saved anywhere).
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        crate::random_bytes(key.as_mut())?;
        Ok(Self::from_bytes(key))
    }

    fn from_bytes(key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"vessel-master-key-id\0");
        hash.update(key.as_ref());
        let digest = hash.finalize();
        let id = KeyId(file::hex(&digest[..8]));
        Self { key, id }
    }

    /// Loads the key in `path`. The file must hold exactly 32 bytes, belong to this process's
    /// user and be inaccessible to group and others (`chmod 600`); anything else is refused
    /// with an error that says how to fix it.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        file::read_private_file(path, KEY_LEN, key.as_mut())?;
        Ok(Self::from_bytes(key))
    }

    /// Loads the key in `path`, creating it first if there is no such file (the first start).
    /// Creation is atomic: the key is written to a temporary file created with mode 0600 in the
    /// same directory, fsynced, linked to `path` (never replacing a key that appeared
    /// meanwhile), and the directory is fsynced. A missing parent directory is created with mode
    /// 0700.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match Self::load(path) {
            Err(SecretError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::create(path)
            }
            other => other,
        }
    }

    /// Writes a new key to `path` unless a file is there already, then loads whatever is there.
    pub(crate) fn create(path: &Path) -> Result<Self, SecretError> {
        let key = Self::generate()?;
        if file::create_private_file(path, key.key.as_ref())? {
            Ok(key)
        } else {
            // Another process created it first: use its key, not ours.
            Self::load(path)
        }
    }

    /// This key's id, as recorded in the secrets it wraps.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Encrypts `plaintext` under this key with a fresh random nonce. `aad` (associated data)
    /// names the secret's owner, e.g. [`volume_aad`](crate::volume_aad): it is not stored, and
    /// [`unwrap`](Self::unwrap) needs the same bytes, so a blob moved to another owner's record
    /// fails to unwrap. Fails only if the system's random number generator does.
    pub fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<WrappedSecret, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::random_bytes(&mut nonce)?;
        let full_aad = self.full_aad(aad);
        let ciphertext = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .map_err(|_| SecretError::MalformedSecret("the secret is too long to wrap".into()))?;
        Ok(WrappedSecret {
            version: WRAPPED_SECRET_VERSION,
            key_id: self.id.clone(),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(ciphertext),
        })
    }

    /// Decrypts a secret that this key wrapped with the same `aad`.
    ///
    /// Errors: [`SecretError::WrongKey`] (naming the key it needs) when another master key
    /// wrapped it; [`SecretError::NotAuthentic`] when the blob was altered or `aad` names another
    /// owner; [`SecretError::UnsupportedVersion`] / [`SecretError::MalformedSecret`] for blobs
    /// this version cannot read.
    pub fn unwrap(
        &self,
        secret: &WrappedSecret,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        if secret.version != WRAPPED_SECRET_VERSION {
            return Err(SecretError::UnsupportedVersion(secret.version));
        }
        if secret.key_id != self.id {
            return Err(SecretError::WrongKey {
                needed: secret.key_id.clone(),
                available: vec![self.id.clone()],
            });
        }
        let nonce: [u8; NONCE_LEN] = BASE64
            .decode(&secret.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| {
                SecretError::MalformedSecret("its nonce is not 12 bytes of base64".into())
            })?;
        let ciphertext = BASE64
            .decode(&secret.ciphertext)
            .map_err(|_| SecretError::MalformedSecret("its ciphertext is not base64".into()))?;
        let full_aad = self.full_aad(aad);
        self.cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &full_aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretError::NotAuthentic {
                owner: String::from_utf8_lossy(aad).into_owned(),
            })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.key).into())
    }

    /// The associated data actually authenticated: format version and key id as well as the
    /// caller's owner name, so that none of them can be changed in a stored blob.
    fn full_aad(&self, aad: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(AAD_DOMAIN.len() + 17 + aad.len());
        full.extend_from_slice(AAD_DOMAIN);
        full.extend_from_slice(self.id.as_str().as_bytes());
        full.push(0);
        full.extend_from_slice(aad);
        full
    }
}
