//! Tap devices for QEMU's `-netdev tap,fd=N`.
//!
//! The tap is not persistent: it exists as long as some process holds the returned fd. The
//! daemon passes the fd to QEMU and closes its own copy, so the tap vanishes when QEMU exits and
//! no orphan tap can outlive its VM.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::name::validate_ifname;
use crate::{Error, Result};

// From <linux/if_tun.h>; libc does not export all of them.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Creates the tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) in the calling thread's network
/// namespace and returns its fd, which is close-on-exec: clear that flag (or dup it) in the child
/// that should inherit it. The tap has a virtio-net header (IFF_VNET_HDR), so QEMU must be told
/// `vnet_hdr=on`; that is what lets guests use checksum and segmentation offloads. If a tap with that name already exists and is unused, the kernel
/// attaches to it instead of failing.
pub fn create_tap(name: &str) -> Result<OwnedFd> {
    validate_ifname(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(Error::OpenTun)?;
    let fd = OwnedFd::from(file);
    // SAFETY: `ifreq` is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: `fd` is an open /dev/net/tun descriptor and `req` a valid, initialized ifreq
    // (name NUL-terminated: at most 15 bytes were copied into the 16-byte zeroed array) that
    // outlives the call; TUNSETIFF reads and writes only that struct.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(Error::CreateTap {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(fd)
}
