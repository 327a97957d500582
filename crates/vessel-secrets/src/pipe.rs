//! Handing a secret to a child process through an inherited pipe.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::volume_key::VolumeKey;

/// Secrets larger than this are refused: a write of at most `PIPE_BUF` bytes into an empty pipe
/// is atomic and never blocks, which is what lets the secret be written before the child exists.
const MAX_SECRET: usize = 4096;

/// A secret waiting in a pipe for a child process, which reads it from `/dev/fd/N`.
///
/// The secret is never on the command line (visible in `ps` and `/proc/PID/cmdline`), in the
/// environment (`/proc/PID/environ`) or in a file. [`new`](Self::new) writes it into a fresh pipe
/// and closes the write end at once, so a reader sees the secret and then end-of-file. The read
/// end stays open in this process with `FD_CLOEXEC`, so no other child spawned meanwhile (the
/// daemon spawns from many tasks) inherits it. [`pass_to`](Self::pass_to) makes the one child
/// that needs it inherit it, under the same descriptor number `N`.
///
/// QEMU and qemu-img read it as a secret object, [`object_arg`](Self::object_arg):
/// `secret,id=ID,file=/dev/fd/N,format=raw` (`format=raw`: the bytes are the secret as they are;
/// `format=base64` would make QEMU decode them first).
///
/// ```no_run
/// # use vessel_secrets::{SecretPipe, VolumeKey};
/// # fn main() -> std::io::Result<()> {
/// # let key = VolumeKey::generate().unwrap();
/// let pipe = SecretPipe::for_volume_key("disk0-secret", &key)?;
/// let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
/// cmd.arg("-object").arg(pipe.object_arg()).arg("-drive").arg(format!(
///     "driver=qcow2,file.driver=file,file.filename=/pool/web.qcow2,encrypt.key-secret={}",
///     pipe.id()
/// ));
/// pipe.pass_to(cmd.as_std_mut()); // tokio; with std::process::Command pass `&mut cmd`
/// let child = cmd.spawn()?;
/// drop(cmd); // closes this process's copy of the read end
/// # Ok(()) }
/// ```
///
/// The descriptor belongs to the `Command` from `pass_to` on, and is closed when the `Command`
/// is dropped: drop it right after spawning. A second child spawned from the same `Command`
/// would find the pipe already drained.
pub struct SecretPipe {
    id: String,
    read: OwnedFd,
}

impl fmt::Debug for SecretPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretPipe")
            .field("id", &self.id)
            .field("fd", &self.read.as_raw_fd())
            .finish()
    }
}

impl SecretPipe {
    /// A pipe holding `secret` for the QEMU object `id` (a QEMU id: a letter, then letters,
    /// digits, `-`, `.` or `_`). At most 4096 bytes.
    pub fn new(id: impl Into<String>, secret: &[u8]) -> io::Result<Self> {
        let id = id.into();
        if !valid_id(&id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{id:?} is not a valid QEMU object id (a letter, then letters, digits, -, . \
                     or _)"
                ),
            ));
        }
        if secret.len() > MAX_SECRET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a secret of {} bytes does not fit a pipe write of at most {MAX_SECRET}",
                    secret.len()
                ),
            ));
        }
        let (read, write) = pipe()?;
        // Never block: the pipe is empty and the secret is at most PIPE_BUF bytes, so the write
        // completes at once; O_NONBLOCK turns any surprise into an error instead of a hang.
        set_nonblocking(&write)?;
        let mut write = File::from(write);
        write.write_all(secret)?;
        drop(write);
        // The child's stdin/stdout/stderr are set up on 0-2 before the descriptor is passed on;
        // keep ours clear of them (possible only when this process runs with 0-2 closed).
        let read = if read.as_raw_fd() <= 2 {
            dup_cloexec_above(&read, 3)?
        } else {
            read
        };
        Ok(Self { id, read })
    }

    /// A pipe holding a volume key as QEMU's LUKS driver wants it:
    /// [`VolumeKey::luks_passphrase`].
    pub fn for_volume_key(id: impl Into<String>, key: &VolumeKey) -> io::Result<Self> {
        Self::new(id, key.luks_passphrase().as_bytes())
    }

    /// The QEMU object id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The descriptor number, in this process and in the child.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// `/dev/fd/N`: where the child reads the secret.
    pub fn path(&self) -> String {
        format!("/dev/fd/{}", self.fd())
    }

    /// The value of `-object` (QEMU) or `--object` (qemu-img, qemu-io):
    /// `secret,id=ID,file=/dev/fd/N,format=raw`. It carries no secret.
    pub fn object_arg(&self) -> String {
        format!("secret,id={},file={},format=raw", self.id, self.path())
    }

    /// Makes the child that `cmd` spawns inherit the read end as descriptor [`fd`](Self::fd).
    /// The descriptor moves into `cmd` and is closed in this process when `cmd` is dropped.
    pub fn pass_to(self, cmd: &mut Command) {
        let read = self.read;
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // functions may be called. It calls fcntl(2), which is async-signal-safe, on a
        // descriptor the closure owns (so it is open in the child), and it neither allocates nor
        // takes locks; its error path builds an `io::Error` from errno, which does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(read.as_raw_fd(), libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A pipe whose both ends have `FD_CLOEXEC`, set atomically at creation.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as pipe2(2) requires.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL touch no memory of ours.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn dup_cloexec_above(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new descriptor or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
