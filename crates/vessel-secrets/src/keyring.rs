//! The current master key, the pending one during a rotation, and rotation itself.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::SecretError;
use crate::file;
use crate::master::{KeyId, MasterKey, WrappedSecret};
use crate::volume_key::{volume_aad, VolumeKey};

/// The master key in force and, while a rotation is under way, the pending key that replaces it.
///
/// # Rotation and crash safety
///
/// A rotation has three steps, each durable before the next starts:
///
/// 1. [`begin_rotation`](Self::begin_rotation) writes a new key to `PATH.new` (atomically, mode
///    0600). If `PATH.new` exists already, an earlier rotation was interrupted: its key is
///    reused, never replaced, since secrets may already be wrapped by it.
/// 2. The caller re-wraps every stored secret with [`rewrap`](Self::rewrap) and stores each
///    result durably. While both keys are loaded every secret unwraps, whichever key wrapped it,
///    because a blob names its key ([`WrappedSecret::key_id`]).
/// 3. [`finish_rotation`](Self::finish_rotation) renames `PATH.new` over `PATH`.
///
/// If the process dies before step 3, `PATH` is still the old key and `PATH.new` the pending
/// one; [`load_or_create`](Self::load_or_create) loads both, every blob (old or re-wrapped) still
/// unwraps, and the next rotation resumes with the same pending key. After step 3 only the new key
/// exists, so step 3 must come only once step 2 has re-wrapped *every* secret: a blob the caller
/// missed then fails with [`SecretError::WrongKey`] naming the old key's id. The rename is atomic,
/// so there is no moment without a valid `PATH`.
///
/// While a rotation is pending, [`wrap`](Self::wrap) uses the pending key, so a secret created
/// during step 2 is never left behind by it.
#[derive(Debug)]
pub struct Keyring {
    path: PathBuf,
    current: MasterKey,
    pending: Option<MasterKey>,
}

impl Keyring {
    /// Loads the master key in `path`, creating it at first start (see
    /// [`MasterKey::load_or_create`]), and the pending key `PATH.new` of an interrupted rotation
    /// if there is one. Temporary files a crash left while a key file was being written are
    /// removed.
    pub fn load_or_create(path: impl Into<PathBuf>) -> Result<Self, SecretError> {
        let path = path.into();
        let pending_path = Self::pending_path(&path);
        file::remove_stale_temp_files(&path)?;
        file::remove_stale_temp_files(&pending_path)?;
        let pending_exists = pending_path.exists();
        if pending_exists && !path.exists() {
            return Err(SecretError::PendingWithoutCurrent {
                current: path,
                pending: pending_path,
            });
        }
        let current = MasterKey::load_or_create(&path)?;
        let pending = if pending_exists {
            Some(MasterKey::load(&pending_path)?)
        } else {
            None
        };
        Ok(Self {
            path,
            current,
            pending,
        })
    }

    /// Where the pending key of a rotation of `path` is kept: `PATH.new`.
    pub fn pending_path(path: &Path) -> PathBuf {
        let mut name = OsString::from(path.as_os_str());
        name.push(".new");
        PathBuf::from(name)
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key in force.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// The key a rotation in progress is moving to.
    pub fn pending(&self) -> Option<&MasterKey> {
        self.pending.as_ref()
    }

    /// The key that new secrets are wrapped with: the pending one during a rotation.
    pub fn wrapping_key(&self) -> &MasterKey {
        self.pending.as_ref().unwrap_or(&self.current)
    }

    /// The loaded key with id `id`.
    pub fn key(&self, id: &KeyId) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(self.pending.as_ref())
            .find(|k| k.id() == id)
    }

    /// Wraps with [`wrapping_key`](Self::wrapping_key).
    pub fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<WrappedSecret, SecretError> {
        self.wrapping_key().wrap(plaintext, aad)
    }

    /// Unwraps with whichever loaded key wrapped `secret`; [`SecretError::WrongKey`] names the
    /// needed key when neither did.
    pub fn unwrap(
        &self,
        secret: &WrappedSecret,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        match self.key(&secret.key_id) {
            Some(key) => key.unwrap(secret, aad),
            None => Err(SecretError::WrongKey {
                needed: secret.key_id.clone(),
                available: std::iter::once(&self.current)
                    .chain(self.pending.as_ref())
                    .map(|k| k.id().clone())
                    .collect(),
            }),
        }
    }

    /// Wraps a volume key for volume `volume` of pool `pool` (associated data [`volume_aad`]).
    pub fn wrap_volume_key(
        &self,
        pool: &str,
        volume: &str,
        key: &VolumeKey,
    ) -> Result<WrappedSecret, SecretError> {
        self.wrap(key.expose_bytes(), &volume_aad(pool, volume))
    }

    /// Unwraps the key of volume `volume` of pool `pool`.
    pub fn unwrap_volume_key(
        &self,
        pool: &str,
        volume: &str,
        secret: &WrappedSecret,
    ) -> Result<VolumeKey, SecretError> {
        let bytes = self.unwrap(secret, &volume_aad(pool, volume))?;
        VolumeKey::from_bytes(&bytes)
    }

    /// Whether `secret` still has to be re-wrapped by the running rotation.
    pub fn needs_rewrap(&self, secret: &WrappedSecret) -> bool {
        secret.key_id != *self.wrapping_key().id()
    }

    /// Step 1 of a rotation: creates the pending key `PATH.new`, or keeps the one an interrupted
    /// rotation left. Returns the pending key.
    pub fn begin_rotation(&mut self) -> Result<&MasterKey, SecretError> {
        if self.pending.is_none() {
            let pending_path = Self::pending_path(&self.path);
            self.pending = Some(MasterKey::create(&pending_path)?);
        }
        Ok(self.pending.as_ref().expect("set above"))
    }

    /// Step 2 of a rotation: `secret` (wrapped by either key) wrapped by the pending key. A
    /// secret the pending key wrapped already is returned as it is.
    pub fn rewrap(&self, secret: &WrappedSecret, aad: &[u8]) -> Result<WrappedSecret, SecretError> {
        let pending = self.pending.as_ref().ok_or(SecretError::NoRotation)?;
        if secret.key_id == *pending.id() {
            // Check it anyway, so that a rotation never carries a damaged blob forward unnoticed.
            pending.unwrap(secret, aad)?;
            return Ok(secret.clone());
        }
        let plaintext = self.unwrap(secret, aad)?;
        pending.wrap(&plaintext, aad)
    }

    /// Step 3 of a rotation: the pending key replaces the current one, in the file (an atomic
    /// rename, then a directory fsync) and here. Call it only once every stored secret has been
    /// re-wrapped and stored.
    pub fn finish_rotation(&mut self) -> Result<(), SecretError> {
        if self.pending.is_none() {
            return Err(SecretError::NoRotation);
        }
        file::replace(&Self::pending_path(&self.path), &self.path)?;
        self.current = self.pending.take().expect("checked above");
        Ok(())
    }

    /// A whole rotation: [`begin_rotation`](Self::begin_rotation), then `rewrap_all`, which must
    /// re-wrap every stored secret with [`rewrap`](Self::rewrap) and store the results durably,
    /// then [`finish_rotation`](Self::finish_rotation) if it succeeded. If it fails, the pending
    /// key stays and a later call resumes with it.
    pub fn rotate<E>(&mut self, rewrap_all: impl FnOnce(&Keyring) -> Result<(), E>) -> Result<(), E>
    where
        E: From<SecretError>,
    {
        self.begin_rotation()?;
        rewrap_all(self)?;
        self.finish_rotation()?;
        Ok(())
    }
}
