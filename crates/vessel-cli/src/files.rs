//! Files the client writes (certificates, keys, its configuration): created with their mode
//! from the start, so that a key is never readable by others, not even for a moment.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::CliError;

/// Creates `path` with `mode` and writes `bytes` to it; an existing file is an error, never
/// overwritten.
pub(crate) fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CliError::io(format!("cannot create {}", path.display()), e))?;
    file.write_all(bytes)
        .map_err(|e| CliError::io(format!("cannot write {}", path.display()), e))
}
