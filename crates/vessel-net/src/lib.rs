//! Host networking plumbing for VMs.
//!
//! Every function acts on the network namespace of the calling thread (netlink sockets are bound
//! to the namespace they were opened in, `tc` and `nft` child processes inherit it), so the daemon
//! or a test can run it inside a namespace of its own.
//!
//! - [`tap`]: tap devices whose fd is handed to QEMU (not persistent: they vanish with QEMU).
//! - [`link::Netlink`]: bridges, VXLAN links and their head-end replication entries, veth pairs,
//!   addresses, routes, over rtnetlink.
//! - [`tc`]: per-tap bandwidth limits in both directions.
//! - [`firewall`]: the nftables ruleset (port security, security-group ingress, NAT) as a pure
//!   rendering of a plain data model, applied atomically.
//! - [`sysctl`]: the few kernel switches the above relies on.

pub mod cidr;
pub mod firewall;
pub mod link;
pub mod name;
pub mod sysctl;
pub mod tap;
pub mod tc;

mod command;

pub use cidr::Ipv4Cidr;
pub use firewall::{BridgePlan, FirewallPlan, IngressRule, PortPlan, Protocol};
pub use link::{LinkInfo, Netlink, VxlanConfig};
pub use name::validate_ifname;
pub use tap::create_tap;
pub use tc::set_bandwidth;

/// Everything that can go wrong in this crate. Messages say what was wrong and, where there is
/// one, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid IPv4 CIDR {input:?}: {reason} (expected e.g. 10.50.0.0/24)")]
    InvalidCidr { input: String, reason: &'static str },
    #[error("{what} must not be 0 and must fit the kernel's limits, got {value}")]
    InvalidValue { what: &'static str, value: u64 },
    #[error("cannot open /dev/net/tun (is the tun module loaded? try `modprobe tun`)")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot create tap {name:?} (TUNSETIFF failed; does a non-tap link of that name exist, and are we root?)")]
    CreateTap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a netlink socket")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("link {0:?} does not exist")]
    NoSuchLink(String),
    #[error("link {0:?} already exists; delete it first or pick another name")]
    LinkExists(String),
    #[error("netlink request failed: {what}")]
    Netlink {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink request failed: {what}: {detail}")]
    NetlinkOther { what: String, detail: String },
    #[error("invalid firewall plan for bridge {bridge:?}: {reason}")]
    InvalidPlan { bridge: String, reason: String },
    #[error("`{program}` is not installed: {hint}")]
    ToolMissing {
        program: &'static str,
        hint: &'static str,
    },
    #[error("`{command}` failed (exit status {status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{program}`")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write sysctl {path}{hint}")]
    Sysctl {
        path: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
