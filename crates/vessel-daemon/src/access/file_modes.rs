//! File modes of the daemon's data: nobody but root may read the store, the keys, the volumes
//! or the run dirs. Each VM's QEMU runs as a user of its own and must not be able to open
//! another VM's disk, nor the database with every wrapped key, through "other" permission bits.
//!
//! - The daemon runs with umask 077, so everything it (or a QEMU it starts) creates is 0600 or
//!   0700 from the start.
//! - At every start, the data dir is set to 0700 and everything below it loses its group and
//!   other bits (0644 becomes 0600, 0755 becomes 0700, a read-only image's 0444 becomes 0400):
//!   a data dir made beforehand, or files copied in by hand, are fixed before the API opens.
//! - A pool outside the data dir is the host admin's directory: its modes are not changed, but
//!   a pool directory that group or others may enter is logged as a warning at every start and
//!   at `pool create` (docs/security.md).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context as _;

/// Sets the process's umask to 077 (only the owner gets permissions on new files).
pub fn private_umask() {
    // SAFETY: umask only changes the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Makes `data_dir` 0700 and takes group and other bits off everything below it (symlinks are
/// not followed). Returns how many entries were changed.
pub fn secure_data_dir(data_dir: &Path) -> anyhow::Result<usize> {
    let mut changed = 0;
    let meta = std::fs::symlink_metadata(data_dir)
        .with_context(|| format!("cannot read {}", data_dir.display()))?;
    if meta.permissions().mode() & 0o7777 != 0o700 {
        set_mode(data_dir, 0o700)?;
        changed += 1;
    }
    changed += secure_below(data_dir)?;
    Ok(changed)
}

fn secure_below(dir: &Path) -> anyhow::Result<usize> {
    let mut changed = 0;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Gone meanwhile (a QEMU exiting removes nothing here, but be lenient).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        // Owner bits stay; set-id bits, group and others go.
        let private = mode & 0o700;
        if mode != private {
            set_mode(&path, private)?;
            changed += 1;
        }
        if meta.is_dir() {
            changed += secure_below(&path)?;
        }
    }
    Ok(changed)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))
}

/// Why a pool directory outside the data dir is too open, if it is: group or others may enter
/// or read it.
pub fn pool_dir_problem(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "pool directory {} has mode {mode:o}: group or others may enter it, and each VM's \
             QEMU user is an \"other\"; run chmod 700 on it",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn an_open_data_dir_is_made_private_throughout() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("pools/default")).unwrap();
        std::fs::write(data.join("vessel.db"), b"x").unwrap();
        std::fs::write(data.join("pools/default/v.qcow2"), b"x").unwrap();
        std::fs::write(data.join("pools/default/img.qcow2"), b"x").unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        set_mode(&data, 0o755).unwrap();
        set_mode(&data.join("pools"), 0o755).unwrap();
        set_mode(&data.join("pools/default"), 0o2775).unwrap();
        set_mode(&data.join("vessel.db"), 0o644).unwrap();
        set_mode(&data.join("pools/default/v.qcow2"), 0o666).unwrap();
        set_mode(&data.join("pools/default/img.qcow2"), 0o444).unwrap();
        set_mode(&outside, 0o644).unwrap();

        assert_eq!(secure_data_dir(&data).unwrap(), 6);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("pools")), 0o700);
        assert_eq!(mode(&data.join("pools/default")), 0o700);
        assert_eq!(mode(&data.join("vessel.db")), 0o600);
        assert_eq!(mode(&data.join("pools/default/v.qcow2")), 0o600);
        // Still read-only (that is how an image is told from a volume), now for root only.
        assert_eq!(mode(&data.join("pools/default/img.qcow2")), 0o400);
        // A symlink's target is not the data dir's.
        assert_eq!(mode(&outside), 0o644);
        // A second start has nothing to fix.
        assert_eq!(secure_data_dir(&data).unwrap(), 0);
    }

    #[test]
    fn an_open_pool_directory_is_named_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        set_mode(tmp.path(), 0o700).unwrap();
        assert_eq!(pool_dir_problem(tmp.path()), None);
        set_mode(tmp.path(), 0o755).unwrap();
        let problem = pool_dir_problem(tmp.path()).unwrap();
        assert!(
            problem.contains("mode 755") && problem.contains("chmod 700"),
            "{problem}"
        );
    }
}
