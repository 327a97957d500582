//! Files on the daemon's host named in requests (`vessel_auth::host_files`): who may name them,
//! and how the daemon opens them.
//!
//! A caller with `host.files` (admin on `*`, root on the unix socket) may name any file. Anyone
//! else may only name a file inside a directory the configuration opens for that kind of field
//! (`kernel_dirs`, `import_dirs`, `export_dirs`). Such a file is opened with `openat2` beneath
//! the directory with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the kernel
//! itself refuses a `..` that leaves the directory and any symlink on the way (the final
//! component included), in the same call that opens the file, so nothing can be swapped between
//! a check and the open. Every open of a path inside an allow-listed directory goes through here,
//! whoever named it; a path outside them was necessarily named by a host admin.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use vessel_api::ApiError;
use vessel_auth::host_files::{DirKind, HostField};
use vessel_auth::{Identity, Permission, Scope};

use crate::config::Config;

/// The allow-listed directories of a kind of field.
pub fn dirs(config: &Config, kind: DirKind) -> &[PathBuf] {
    match kind {
        DirKind::Kernel => &config.kernel_dirs,
        DirKind::Import => &config.import_dirs,
        DirKind::Export => &config.export_dirs,
        DirKind::HostOnly => &[],
    }
}

/// The allow-listed directory `path` names a file in (by its words: `..` and symlinks are left
/// to [`open_beneath`]), and the rest of the path below it.
pub fn confine<'a>(dirs: &'a [PathBuf], path: &Path) -> Option<(&'a Path, PathBuf)> {
    if !path.is_absolute() {
        return None;
    }
    dirs.iter().find_map(|dir| {
        let rel = path.strip_prefix(dir).ok()?;
        let names_a_file = rel.components().next().is_some()
            && rel.components().all(|c| !matches!(c, Component::RootDir));
        names_a_file.then(|| (dir.as_path(), rel.to_path_buf()))
    })
}

/// Opens `rel` beneath `dir`: no `..` out of it, no symlink anywhere on the way.
pub fn open_beneath(dir: &Path, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
    let dir_fd = File::open(dir)?;
    let rel_c = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: all-zero bytes are a valid `open_how` (no flags), filled in below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    if flags & libc::O_CREAT != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    use std::os::fd::AsRawFd;
    // SAFETY: openat2 with a valid directory fd, a NUL-terminated path and a properly sized
    // open_how; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir_fd.as_raw_fd(),
            rel_c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Opens a file to read that a request named (a kernel, an initrd, an import source): beneath
/// its allow-listed directory when it is in one, else as named (only host admins name those).
pub fn open_read(config: &Config, kind: DirKind, path: &Path) -> io::Result<File> {
    let file = match confine(dirs(config, kind), path) {
        Some((dir, rel)) => open_beneath(dir, &rel, libc::O_RDONLY, 0)?,
        None => File::open(path)?,
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    Ok(file)
}

/// Opens a VM's boot files for QEMU to inherit (kernel then initrd, or the disk): a file in
/// `kernel_dirs` beneath it (a symlink swapped in after the VM was created is refused here).
pub fn open_boot_files(
    config: &Config,
    boot: &vessel_api::Boot,
) -> Result<Vec<std::sync::Arc<File>>, String> {
    let files: Vec<(&str, &str, DirKind)> = match boot {
        vessel_api::Boot::Kernel { kernel, initrd, .. } => {
            let mut files = vec![("kernel", kernel.as_str(), DirKind::Kernel)];
            if let Some(initrd) = initrd {
                files.push(("initrd", initrd.as_str(), DirKind::Kernel));
            }
            files
        }
        vessel_api::Boot::Disk { disk } => vec![("disk", disk.as_str(), DirKind::HostOnly)],
        vessel_api::Boot::FirstDisk => vec![],
    };
    files
        .into_iter()
        .map(|(what, path, kind)| {
            open_read(config, kind, Path::new(path))
                .map(std::sync::Arc::new)
                .map_err(|e| format!("cannot open the {what} {path}: {e}"))
        })
        .collect()
}

/// Whether an export to `path` stays inside an export directory: a new file directly in it (the
/// export writes by path for as long as it runs, so no subdirectory a tenant could swap for a
/// symlink may lie on the way), not a symlink, not `.` or `..`.
fn export_place_ok(dir: &Path, rel: &Path) -> io::Result<()> {
    let mut components = rel.components();
    let (Some(Component::Normal(name)), None) = (components.next(), components.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an export goes directly into an export directory",
        ));
    };
    let parent_dir = File::open(dir)?;
    use std::os::fd::AsRawFd;
    let name_c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: all-zero bytes are a valid `stat` for fstatat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory fd, a NUL-terminated name and a `stat` to fill.
    let rc = unsafe {
        libc::fstatat(
            parent_dir.as_raw_fd(),
            name_c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a symlink",
        ));
    }
    Ok(())
}

/// Whether the caller may name the file `path` in `field`: with `host.files` anything, else
/// only a file reachable inside an allow-listed directory of the field's kind. A refusal is a
/// 403 naming `host.files` (it never says what is or is not at the path).
pub fn authorize(
    config: &Config,
    identity: &Identity,
    field: &HostField,
    path: &str,
) -> Result<(), ApiError> {
    let Err(denied) = identity.check(Permission::HostFiles, Scope::Host) else {
        return Ok(());
    };
    let reachable = confine(dirs(config, field.dirs), Path::new(path)).is_some_and(|(dir, rel)| {
        match field.dirs {
            DirKind::Export => export_place_ok(dir, &rel).is_ok(),
            _ => open_beneath(dir, &rel, libc::O_RDONLY, 0)
                .and_then(|f| f.metadata())
                .is_ok_and(|m| m.is_file()),
        }
    });
    if reachable {
        return Ok(());
    }
    let setting = match field.dirs {
        DirKind::Kernel => " (or a file of the daemon's kernel_dirs)",
        DirKind::Import => " (or a file of the daemon's import_dirs)",
        DirKind::Export => " (or a file directly in one of the daemon's export_dirs)",
        DirKind::HostOnly => "",
    };
    let mut e = crate::access::caller::permission_denied(denied);
    e.message = format!(
        "field {:?} names a file on the daemon's host, which needs host.files{setting}: {}",
        field.field, e.message
    );
    Err(e.with_hint(match field.dirs {
        DirKind::Kernel => "boot an image of kind kernel/initrd (`vessel vm create --kernel-image K --initrd-image I`), or ask a host admin",
        DirKind::Import => "import from an http(s) URL, or ask a host admin to import the file",
        DirKind::Export => "ask a host admin to export it, or for an export directory",
        DirKind::HostOnly => "boot from an image (`vessel vm create --image`), or ask a host admin",
    }))
}

/// The error of a file a request named that cannot be opened (the path is the caller's own).
pub fn open_failed(what: &str, path: &Path, e: &io::Error) -> ApiError {
    ApiError::invalid(format!("cannot open {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_finds_the_directory_by_its_words() {
        let dirs = vec![PathBuf::from("/srv/k")];
        let (dir, rel) = confine(&dirs, Path::new("/srv/k/a/b")).unwrap();
        assert_eq!(
            (dir, rel.as_path()),
            (Path::new("/srv/k"), Path::new("a/b"))
        );
        assert!(confine(&dirs, Path::new("/srv/k")).is_none());
        assert!(confine(&dirs, Path::new("/srv/kk/a")).is_none());
        assert!(confine(&dirs, Path::new("srv/k/a")).is_none());
        // `..` stays in the words; openat2 refuses it.
        assert!(confine(&dirs, Path::new("/srv/k/../etc/shadow")).is_some());
    }

    #[test]
    fn open_beneath_refuses_dotdot_and_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("allowed");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("kernel"), b"k").unwrap();
        std::fs::write(root.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("out")).unwrap();
        std::os::unix::fs::symlink("kernel", dir.join("in")).unwrap();
        let open = |rel: &str| open_beneath(&dir, Path::new(rel), libc::O_RDONLY, 0);
        assert!(open("kernel").is_ok());
        assert!(open("../secret").is_err());
        assert!(open("out").is_err());
        assert!(open("in").is_err());
        assert!(export_place_ok(&dir, Path::new("new.qcow2")).is_ok());
        assert!(export_place_ok(&dir, Path::new("out")).is_err());
        assert!(export_place_ok(&dir, Path::new("../x")).is_err());
        std::fs::create_dir(dir.join("sub")).unwrap();
        assert!(export_place_ok(&dir, Path::new("sub/x")).is_err());
    }
}
