//! The kernel switches Vessel's networking relies on, per network namespace.
//!
//! Synchronous on purpose: /proc/sys/net shows the namespace of the thread that opens it, so
//! the write must not hop to a blocking-pool thread that may live in another namespace.

use crate::{Error, Result};

/// Turns on IPv4 forwarding (`net.ipv4.ip_forward=1`), needed for NAT to an uplink.
pub fn enable_ip_forward() -> Result<()> {
    write("/proc/sys/net/ipv4/ip_forward", "1", "")
}

/// Makes bridged IPv4 traffic pass the IPv4 netfilter hooks and thus connection tracking
/// (`net.bridge.bridge-nf-call-iptables=1`). The firewall's "replies are allowed" rule depends on
/// it, because this kernel (and many others) has no `nf_conntrack_bridge`: see
/// [`crate::firewall`].
pub fn enable_bridge_conntrack() -> Result<()> {
    write(
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "1",
        " (missing: load the br_netfilter module with `modprobe br_netfilter`)",
    )
}

fn write(path: &str, value: &str, hint: &'static str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Sysctl {
        path: path.to_string(),
        hint,
        source,
    })
}
