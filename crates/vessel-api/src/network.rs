use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a network connects its VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// QEMU user-mode NAT inside each VM's QEMU process: no privileges needed, VMs reach the
    /// outside but not each other, and nothing reaches them.
    User,
    /// An existing Linux bridge of the host: VMs sit on the network that bridge is on.
    Bridge,
    /// A bridge Vessel makes, with a subnet, addresses from Vessel's IPAM handed out by its
    /// DHCP server, and NAT to an uplink.
    Managed,
    /// An overlay segment: a bridge Vessel makes, joined to the same segment on other servers
    /// through a VXLAN tunnel.
    Vxlan,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::User => "user",
            NetworkKind::Bridge => "bridge",
            NetworkKind::Managed => "managed",
            NetworkKind::Vxlan => "vxlan",
        }
    }

    /// Whether its VMs get a tap on a bridge of the host (everything but `user`).
    pub fn uses_tap(self) -> bool {
        self != NetworkKind::User
    }
}

/// What a network does with traffic towards its VMs that no rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IngressPolicy {
    /// Everything reaches the VMs (anti-spoofing still applies to what they send).
    #[default]
    Allow,
    /// Security-group style: only replies to the VMs' own connections, ARP, DHCP and traffic
    /// matching an ingress rule reach them.
    Deny,
}

impl IngressPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressPolicy::Allow => "allow",
            IngressPolicy::Deny => "deny",
        }
    }
}

/// The protocol an ingress rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleProtocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

impl RuleProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleProtocol::Tcp => "tcp",
            RuleProtocol::Udp => "udp",
            RuleProtocol::Icmp => "icmp",
            RuleProtocol::Any => "any",
        }
    }
}

/// Allows traffic into the network's VMs (used when the ingress policy is `deny`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    pub protocol: RuleProtocol,
    /// A destination port (`80`) or range (`8000-8099`); TCP and UDP only. Absent: all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// Only from this IPv4 network (`192.168.1.0/24`). Absent: from anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A network as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub name: String,
    /// The project the network belongs to; NICs of that project's VMs may use it.
    #[serde(default = "default_project")]
    pub project: String,
    pub kind: NetworkKind,
    /// The Linux bridge its VMs' taps join: the host's bridge (`bridge`), or the one Vessel
    /// made (`managed`, `vxlan`: `vb-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// IPv4 subnet (`10.50.0.0/24`) its VMs get addresses from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The host's address on the bridge: the VMs' router, DHCP server and NAT gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Addresses handed to VMs come from this range (`first-last`) of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Vessel's DHCP server answers the VMs on this network.
    pub dhcp: bool,
    /// DNS servers the DHCP server tells the VMs about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Traffic from the subnet to other networks leaves through this interface, masqueraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// VXLAN network identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The other servers' tunnel endpoints (VXLAN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// This server's tunnel endpoint address (VXLAN); the kernel picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// The interface the tunnel's packets leave through (VXLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    pub mtu: u32,
    pub ingress_policy: IngressPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// NICs of VMs on this network (`vm/nic`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    pub created_at_ms: u64,
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkRequest {
    /// At most 12 characters: it names the interfaces Vessel makes (`vb-<name>`, `vx-<name>`),
    /// and Linux allows 15.
    pub name: String,
    pub kind: NetworkKind,
    /// The project it belongs to; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `bridge`: the host's bridge to attach to (must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `managed` (required) and `vxlan` (optional): IPv4 subnet, at most /16 and at least /29.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Default: the subnet's first address (`managed`); none on `vxlan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// `first-last`: the addresses IPAM hands out. Default: the whole subnet but the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Default: on for `managed`, off for `vxlan` (every server would answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// `managed`: NAT to the outside through this interface. Absent: VMs reach each other and
    /// the host only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// `vxlan`: 1 to 16777215, unique on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    /// Default 1500 (1450 on `vxlan`, which carries a 50-byte header inside the underlay's 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ingress_policy: IngressPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
}

/// `PATCH /v1/networks/{name}`: absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNetworkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_policy: Option<IngressPolicy>,
    /// Replaces all ingress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Replaces the VXLAN peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
}

/// A network interface of a VM on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNic {
    /// `nic0`, `nic1`, ...: stable for the NIC's life.
    pub id: String,
    pub network: String,
    /// Unicast, unique on this server.
    pub mac: String,
    /// The address IPAM gave the NIC (networks with a subnet); the only source address the NIC
    /// may send from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// Limit in each direction, in megabits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbit: Option<u32>,
    /// Anti-spoofing: the NIC may only send from its MAC and address. On unless turned off
    /// (for a VM that routes for others).
    #[serde(default = "yes")]
    pub port_security: bool,
    /// The host's tap device while the VM runs.
    pub tap: String,
}

fn default_project() -> String {
    "default".into()
}

fn yes() -> bool {
    true
}

/// `POST /v1/vms/{name}/nics`: a NIC on a network, also while the VM runs (q35).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNicRequest {
    pub network: String,
    /// Default: a random one with QEMU's prefix 52:54:00.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// A fixed address from the network's subnet. Default: the next free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbit: Option<u32>,
    /// Turn anti-spoofing off for this NIC.
    #[serde(default)]
    pub no_port_security: bool,
}
