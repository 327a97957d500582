//! Choosing between KVM and TCG.
//!
//! "/dev/kvm exists" is not the same as "KVM runs a Linux guest": on nested paravirtual hosts
//! (the `kvm_pvm` module) the device opens and answers ioctls, yet unmodified Linux guests die
//! with an emulation failure. So `auto` only picks KVM when every check passes, and says why
//! when it does not.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator `auto` resolved to and the reason, for logs and `vessel host check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// `KVM_GET_API_VERSION`; the only stable answer is 12.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_API_VERSION: libc::c_int = 12;
/// Paravirtual nested KVM; its emulator cannot run unmodified Linux guests.
const BROKEN_KVM_MODULES: &[&str] = &["kvm_pvm"];

/// Decides what `accelerator = "auto"` means on this host.
pub fn detect_accelerator() -> AccelChoice {
    match kvm_unusable_reason(Path::new("/dev/kvm"), Path::new("/sys/module")) {
        None => AccelChoice {
            accel: Accel::Kvm,
            reason: "KVM is present and usable".into(),
        },
        Some(why) => AccelChoice {
            accel: Accel::Tcg,
            reason: format!("{why}; using TCG software emulation (slow)"),
        },
    }
}

/// Why KVM cannot be used, or None when it can.
pub fn kvm_unusable_reason(device: &Path, modules: &Path) -> Option<String> {
    let file = match OpenOptions::new().read(true).write(true).open(device) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{} does not exist (no KVM module loaded, or no hardware virtualization)",
                device.display()
            ))
        }
        Err(e) => return Some(format!("{} cannot be opened: {e}", device.display())),
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; the fd is valid for
    // the duration of the call because `file` is alive.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Some(format!(
            "{} answers KVM API version {version}, expected {KVM_API_VERSION}",
            device.display()
        ));
    }
    for module in BROKEN_KVM_MODULES {
        if modules.join(module).exists() {
            return Some(format!(
                "KVM is provided by the '{module}' module (nested paravirtual KVM), which crashes unmodified Linux guests with an emulation failure"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_means_tcg_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let why = kvm_unusable_reason(&dir.path().join("kvm"), dir.path()).unwrap();
        assert!(why.contains("does not exist"), "{why}");
    }

    #[test]
    fn a_device_that_is_not_kvm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("kvm");
        std::fs::write(&fake, b"").unwrap();
        let why = kvm_unusable_reason(&fake, dir.path()).unwrap();
        assert!(why.contains("API version"), "{why}");
    }

    #[test]
    fn this_host_resolves_to_tcg_when_kvm_pvm_is_loaded() {
        // host-facts: these machines load kvm_pvm, which must never be picked.
        if Path::new("/sys/module/kvm_pvm").exists() {
            let choice = detect_accelerator();
            assert_eq!(choice.accel, Accel::Tcg);
            assert!(choice.reason.contains("kvm_pvm"), "{}", choice.reason);
        }
    }
}
