//! Filesystem space of a directory.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::PoolUsage;

/// `statvfs(2)` on `path`. Blocking but quick (no IO beyond the superblock counters).
// The casts are no-ops on 64-bit Linux but widen on 32-bit targets.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn usage(path: &Path) -> io::Result<PoolUsage> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory of
    // the right size; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled in the whole struct.
    let stat = unsafe { stat.assume_init() };
    let fragment = stat.f_frsize as u64;
    let total = stat.f_blocks as u64 * fragment;
    Ok(PoolUsage {
        total,
        used: total.saturating_sub(stat.f_bfree as u64 * fragment),
        available: stat.f_bavail as u64 * fragment,
    })
}
