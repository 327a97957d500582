//! Helpers for tests that run the real qemu-img and qemu-io.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vessel_storage::{Format, QemuImg};

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
