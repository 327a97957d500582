//! Helpers for tests that run the real qemu-img and qemu-io.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vessel_storage::{Format, QemuImg, SecretPipe, VolumeKey};

/// The real qemu-img; fails the test with an install hint when it is missing.
pub fn qemu_img() -> QemuImg {
    require("qemu-img");
    QemuImg::new()
}

pub fn require(tool: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "{tool} is needed by these tests; install it with `apt-get install qemu-utils`"
    );
}

/// Writes `len` bytes of `pattern` at `offset` through qemu-io, the way a guest would.
pub fn guest_write(path: &Path, format: Format, pattern: u8, offset: u64, len: u64) {
    require("qemu-io");
    let out = Command::new("qemu-io")
        .args(["-f", format.as_str(), "-c"])
        .arg(format!("write -P {pattern:#x} {offset} {len}"))
        .arg(path)
        .output()
        .expect("run qemu-io");
    assert!(
        out.status.success(),
        "qemu-io write failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The guest-visible bytes of an image, read by converting it to raw.
pub fn guest_bytes(path: &Path, format: Format) -> Vec<u8> {
    let out_path = path.with_extension("flat.raw.tmp");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", format.as_str(), "-O", "raw"])
        .arg(path)
        .arg(&out_path)
        .output()
        .expect("run qemu-img convert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_path).unwrap();
    std::fs::remove_file(&out_path).unwrap();
    bytes
}

/// Pids of live processes whose command line mentions `needle` (a zombie has an empty command
/// line, so a killed but not yet reaped process does not count).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `limit` for `done`.
pub fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Files in `dir`, names only, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn path_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A string that must never appear in an encrypted volume's file.
pub const MARKER: &[u8] = b"VESSEL-PLAINTEXT-MARKER-5c1e9b";

/// Runs one qemu-io command on an encrypted qcow2 image, unlocked with `key` through a pipe;
/// `Ok(stdout)` or `Err(stderr and stdout)`.
pub fn qemu_io_encrypted(path: &Path, key: &VolumeKey, command: &str) -> Result<String, String> {
    require("qemu-io");
    let pipe = SecretPipe::for_volume_key("sec0", key).unwrap();
    let mut cmd = Command::new("qemu-io");
    cmd.arg("--object")
        .arg(pipe.object_arg())
        .arg("--image-opts")
        .arg(format!(
            "driver=qcow2,file.driver=file,file.filename={},encrypt.key-secret=sec0",
            path.display()
        ))
        .args(["-c", command]);
    pipe.pass_to(&mut cmd);
    let out = cmd.output().expect("run qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && !stdout.contains("verification failed") {
        Ok(stdout)
    } else {
        Err(format!("{stderr}{stdout}"))
    }
}

/// Fills `len` bytes at `offset` with [`MARKER`] repeated, the way a guest would write them.
pub fn write_marker(path: &Path, key: &VolumeKey, offset: u64, len: u64) {
    let pattern = path.with_extension("marker.tmp");
    std::fs::write(&pattern, MARKER).unwrap();
    let result = qemu_io_encrypted(
        path,
        key,
        &format!("write -s {} {offset} {len}", pattern.display()),
    );
    std::fs::remove_file(&pattern).unwrap();
    result.expect("qemu-io write");
}

/// How often `needle` occurs in `haystack`.
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Whether this process still has the pipe with inode `inode` open.
pub fn pipe_open_here(inode: u64) -> bool {
    let wanted = format!("pipe:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == wanted))
}
