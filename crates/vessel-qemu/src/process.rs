//! QEMU as an operating-system process: spawning it in its own session with pre-bound sockets,
//! recognising it again after a daemon restart, and noticing when it ends.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use crate::cmdline::{AGENT_FD, CONSOLE_FD, QMP_FD, SECRET_FD_BASE};

/// A process identified beyond its pid: the kernel reuses pids, so the start time (in clock ticks
/// since boot, from /proc/PID/stat) tells our QEMU apart from a later process with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessId {
    /// Reads the identity of a live process.
    pub fn of(pid: u32) -> io::Result<ProcessId> {
        let (_, start_time) = read_stat(pid)?;
        Ok(ProcessId { pid, start_time })
    }

    /// The process named by a QEMU `-pidfile`, if it exists and runs. (QEMU writes it before
    /// the daemon learns the pid, so it finds a QEMU whose start a daemon crash cut short.)
    pub fn from_pid_file(path: &std::path::Path) -> Option<ProcessId> {
        let pid = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        let id = ProcessId::of(pid).ok()?;
        id.is_alive().then_some(id)
    }

    /// Whether this very process still runs (not exited, not a zombie, pid not reused).
    pub fn is_alive(&self) -> bool {
        matches!(read_stat(self.pid), Ok((state, start)) if state != 'Z' && state != 'X' && start == self.start_time)
    }

    /// The process's command line arguments.
    pub fn cmdline(&self) -> io::Result<Vec<String>> {
        let raw = std::fs::read(format!("/proc/{}/cmdline", self.pid))?;
        Ok(raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }
}

/// State letter and start time from /proc/PID/stat. The command name in field 2 may contain
/// spaces and parentheses, so fields are counted from the last ')'.
fn read_stat(pid: u32) -> io::Result<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Field 3 (state) is fields[0]; field 22 (starttime) is fields[19].
    let state = fields.first().and_then(|s| s.chars().next());
    let start = fields.get(19).and_then(|s| s.parse().ok());
    match (state, start) {
        (Some(state), Some(start)) => Ok((state, start)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed /proc stat",
        )),
    }
}

/// File descriptors QEMU inherits: its listening sockets at fixed numbers, then the read ends of
/// secret pipes from [`SECRET_FD_BASE`] on, then the taps, each list in order.
pub struct InheritedSockets {
    pub qmp: UnixListener,
    pub console: UnixListener,
    pub agent: UnixListener,
    pub secrets: Vec<RawFd>,
    /// Open taps of the VM's NICs, inherited right after the secret pipes, in NIC order.
    pub taps: Vec<RawFd>,
    /// The boot files (kernel, initrd / disk), inherited right after the taps.
    pub boot: Vec<RawFd>,
}

/// Spawns QEMU in a new session (so that a terminal's Ctrl-C to the daemon does not reach it,
/// and it outlives the daemon), with its output going to `log`. `switches_user`: QEMU's
/// command line has `-runas`, so it keeps what it needs to switch (see [`drop_privileges`]).
pub fn spawn(
    binary: &str,
    args: &[String],
    sockets: InheritedSockets,
    log: File,
    switches_user: bool,
) -> io::Result<Child> {
    // Move the listeners above the fds they must land on, so the dup2 calls below cannot clobber
    // one with the other; the copies are close-on-exec, the dup2 targets are not.
    let qmp = dup_above(sockets.qmp.as_raw_fd(), 10)?;
    let console = dup_above(sockets.console.as_raw_fd(), 10)?;
    let agent = dup_above(sockets.agent.as_raw_fd(), 10)?;
    let secrets = sockets
        .secrets
        .iter()
        .chain(&sockets.taps)
        .chain(&sockets.boot)
        .map(|fd| dup_above(*fd, 10))
        .collect::<io::Result<Vec<_>>>()?;
    // Where each inherited fd goes; built before the fork, since the child may not allocate.
    let mut moves: Vec<(RawFd, RawFd)> = vec![
        (qmp.as_raw_fd(), QMP_FD),
        (console.as_raw_fd(), CONSOLE_FD),
        (agent.as_raw_fd(), AGENT_FD),
    ];
    moves.extend(
        secrets
            .iter()
            .enumerate()
            .map(|(i, fd)| (fd.as_raw_fd(), SECRET_FD_BASE + i as RawFd)),
    );
    let log_err = log.try_clone()?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (setsid, dup2) on fds that are open in the parent at fork time; it iterates a
    // vector built before the fork and does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            drop_privileges(switches_user)
        });
    }
    let child = command.spawn();
    drop((qmp, console, agent, secrets, sockets));
    child
}

/// `struct __user_cap_header_struct` of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct` of capset(2); version 3 takes two of them.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// CAP_SETGID (6) and CAP_SETUID (7), from linux/capability.h.
const SETID_CAPS: u64 = (1 << 6) | (1 << 7);

/// Leaves QEMU without any capability, for good: no new privileges on exec (setuid files, file
/// capabilities), an empty bounding set (so not even uid 0's exec regains any), and empty
/// effective, permitted and inheritable sets. QEMU needs none: its sockets and taps are passed
/// as fds and its files are the daemon's. Together with seccomp (`-sandbox`), a compromised QEMU
/// cannot change the host's network, load modules, mount, trace other processes or read files
/// it does not own. Without CAP_SETPCAP (an unprivileged daemon) there is nothing to drop.
///
/// `keep_setid`: QEMU switches to its own user (`-runas`), for which it needs CAP_SETGID and
/// CAP_SETUID; only those two stay (bounding, permitted, effective). Across the exec, uid 0
/// gets its bounding set as permitted set, limited by no_new_privs to the permitted set it had,
/// so both must hold them. The switch to a non-zero uid then clears the permitted and effective
/// sets (the kernel does so at setuid without SECBIT_KEEP_CAPS), so the running QEMU has no
/// capability either; the two left in its bounding set only limit what an exec could gain,
/// and it cannot exec (no_new_privs, `-sandbox spawn=deny`).
///
/// Runs in the forked child before exec: only raw syscalls, no allocation.
fn drop_privileges(keep_setid: bool) -> io::Result<()> {
    let kept = if keep_setid { SETID_CAPS } else { 0 };
    // SAFETY: prctl with these arguments only changes this (child) process's flags.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for cap in 0..64 {
        if kept & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: as above; EINVAL marks the end of the kernel's capability list.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINVAL) => break,
                Some(libc::EPERM) => return Ok(()),
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // Version 3 splits the 64 capability bits in two 32-bit halves; both kept ones are in the
    // low half.
    let data = [
        CapData {
            effective: kept as u32,
            permitted: kept as u32,
            inheritable: 0,
        },
        CapData {
            effective: (kept >> 32) as u32,
            permitted: (kept >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads one header and two data structs, which live on this stack frame.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn dup_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC on a valid fd returns a new fd that we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a freshly created fd not owned by anything else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// How the daemon learns that a VM process ended: as its parent (exit status known) or, after a
/// daemon restart, through a pidfd (the status belongs to whoever reaps it).
pub enum ExitWatch {
    Child(Child),
    Pidfd(AsyncFd<OwnedFd>),
}

impl ExitWatch {
    pub fn pidfd(pid: u32) -> io::Result<ExitWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: `owned` is a valid open fd that the AsyncFd takes ownership of, so it stays open
        // and refers to the same pidfd for the AsyncFd's whole life.
        let registered = unsafe { AsyncFd::register(owned) }.map_err(io::Error::from)?;
        Ok(ExitWatch::Pidfd(registered))
    }

    /// Waits for the process to end; returns how it ended in words, and whether it was clean.
    pub async fn wait(&mut self) -> (String, bool) {
        match self {
            ExitWatch::Child(child) => match child.wait().await {
                Ok(status) => (describe_status(status), status.success()),
                Err(e) => (format!("could not collect the exit status: {e}"), false),
            },
            ExitWatch::Pidfd(fd) => match fd.readable().await {
                Ok(_) => ("the process exited (adopted after a daemon restart, so its exit status is unknown)".into(), false),
                Err(e) => (format!("could not watch the process: {e}"), false),
            },
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGSYS => " (SIGSYS: blocked by the seccomp sandbox)",
            _ => "",
        };
        format!("killed by signal {signal}{name}")
    } else {
        format!("exited with code {}", status.code().unwrap_or(-1))
    }
}

/// The last non-empty line QEMU wrote to its log, to explain a failure.
pub fn last_log_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// Sends SIGKILL to the process if it is still the one we started.
pub fn kill(id: ProcessId) -> io::Result<()> {
    if !id.is_alive() {
        return Ok(());
    }
    // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
    let rc = unsafe { libc::kill(id.pid as libc::pid_t, libc::SIGKILL) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let impostor = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
    }

    #[test]
    fn signals_are_named_in_exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(1 << 8)),
            "exited with code 1"
        );
    }
}
