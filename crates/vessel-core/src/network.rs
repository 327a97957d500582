//! Networks and NICs: what a valid network is, how addresses and MACs are handed out, and the
//! names of the interfaces Vessel makes on the host. Pure: the daemon passes in what exists.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use vessel_api::{
    AddNicRequest, CreateNetworkRequest, IngressRule, Network, NetworkKind, RuleProtocol,
    UpdateNetworkRequest, VmNic, VmSpec,
};

use crate::name::validate_name;

/// Linux interface names hold 15 bytes (IFNAMSIZ 16 with the NUL).
pub const IFNAME_MAX: usize = 15;
/// Network names become `vb-<name>` and `vx-<name>`.
pub const NETWORK_NAME_MAX: usize = IFNAME_MAX - 3;
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// At most this many NICs per VM (PCI hot-plug slots are reserved for them on q35).
pub const MAX_NICS: usize = 8;
const MAX_DNS: usize = 4;
const MAX_RULES: usize = 256;
const MAX_PEERS: usize = 64;

/// An IPv4 network: `10.50.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
    pub fn overlaps(self, other: Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    pub fn last_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()) - 1)
    }
    /// Whether `ip` may be given to a host: inside, and neither the network nor the broadcast
    /// address.
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 network; write it as 10.50.0.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {prefix:?} in {s:?} is not 0 to 32"))?;
        let cidr = Ipv4Cidr {
            network: addr,
            prefix,
        };
        let network = Ipv4Addr::from(u32::from(addr) & cidr.mask());
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; the network is {network}/{prefix}"
            ));
        }
        Ok(cidr)
    }
}

/// The address ranges no one routes on the internet: RFC 1918 and the shared address space of
/// carrier-grade NAT (RFC 6598). A tenant may put only these behind a bridge it controls; any
/// other prefix would make the host route someone else's addresses (or its own uplink's) to
/// the tenant's VMs. (Subnets are IPv4 only; IPv6 subnets, when they come, get fc00::/7.)
pub const PRIVATE_RANGES: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// Whether `subnet` lies wholly inside one of [`PRIVATE_RANGES`].
pub fn is_private_subnet(subnet: Ipv4Cidr) -> bool {
    PRIVATE_RANGES.iter().any(|range| {
        let range: Ipv4Cidr = range.parse().expect("the private ranges parse");
        subnet.prefix >= range.prefix && range.contains(subnet.network)
    })
}

/// The check of a subnet asked for by someone who is not a host admin: private ranges only.
/// A subnet that does not parse is left to [`network_from_create`] to explain.
pub fn check_tenant_subnet(subnet: &str) -> Result<(), String> {
    match subnet.parse::<Ipv4Cidr>() {
        Ok(cidr) if !is_private_subnet(cidr) => Err(format!(
            "subnet {cidr} is not a private range ({}); only a host admin may route other \
             prefixes into a bridge",
            PRIVATE_RANGES.join(", ")
        )),
        _ => Ok(()),
    }
}

/// The bridge Vessel makes for a `managed` or `vxlan` network.
pub fn bridge_name(network: &str) -> String {
    format!("vb-{network}")
}

/// The VXLAN device of a `vxlan` network.
pub fn vxlan_name(network: &str) -> String {
    format!("vx-{network}")
}

/// Prefixes of every interface Vessel makes, for finding orphans after a crash.
pub const OWNED_PREFIXES: [&str; 3] = ["vb-", "vx-", "vt"];

/// The tap of a VM's NIC: stable, unique per (VM, NIC), within the 15-byte limit.
pub fn tap_name(vm: &str, nic_id: &str) -> String {
    format!("vt{:012x}", crate::disks::stable_hash(vm, nic_id) >> 16)
}

/// Checks an interface name the user gives (a host bridge, an uplink).
pub fn validate_ifname(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!(
            "{what} {name:?} is not an interface name: 1 to {IFNAME_MAX} characters"
        ));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c.is_whitespace()) {
        return Err(format!(
            "{what} {name:?} is not an interface name (no '/', spaces, '.' or '..')"
        ));
    }
    Ok(())
}

pub fn validate_network_name(name: &str) -> Result<(), String> {
    validate_name("network", name)?;
    if name.len() > NETWORK_NAME_MAX {
        return Err(format!(
            "network name {name:?} is {} characters long; the limit is {NETWORK_NAME_MAX}, because it names the host's interfaces vb-{name} and Linux allows {IFNAME_MAX}",
            name.len()
        ));
    }
    Ok(())
}

/// A MAC address as six bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("{s:?} is not a MAC address; write it as 52:54:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!(
            "{s} is a multicast MAC address; a NIC needs a unicast one (first byte even)"
        ));
    }
    if mac == [0; 6] {
        return Err("00:00:00:00:00:00 is not a usable MAC address".into());
    }
    Ok(mac)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC with QEMU's prefix 52:54:00 and three random bytes.
pub fn mac_from_random(random: [u8; 3]) -> String {
    format_mac([0x52, 0x54, 0x00, random[0], random[1], random[2]])
}

fn parse_ipv4(what: &str, s: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not an IPv4 address"))
}

/// The first and last address of a range `a.b.c.d-e.f.g.h`.
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (first, last) = s
        .split_once('-')
        .ok_or_else(|| format!("range {s:?} is not first-last (10.50.0.100-10.50.0.199)"))?;
    let first = parse_ipv4("range start", first.trim())?;
    let last = parse_ipv4("range end", last.trim())?;
    if u32::from(first) > u32::from(last) {
        return Err(format!("range {s:?} ends before it starts"));
    }
    Ok((first, last))
}

/// A port or port range of an ingress rule.
pub fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {p:?} is not 1 to 65535"))
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!("port range {s:?} ends before it starts"));
    }
    Ok((first, last))
}

pub fn validate_rule(rule: &IngressRule) -> Result<(), String> {
    if let Some(ports) = &rule.ports {
        if !matches!(rule.protocol, RuleProtocol::Tcp | RuleProtocol::Udp) {
            return Err(format!(
                "an ingress rule for {} cannot name ports; ports are for tcp and udp",
                rule.protocol.as_str()
            ));
        }
        parse_ports(ports)?;
    }
    if let Some(source) = &rule.source {
        source.parse::<Ipv4Cidr>()?;
    }
    Ok(())
}

fn validate_rules(rules: &[IngressRule]) -> Result<(), String> {
    if rules.len() > MAX_RULES {
        return Err(format!(
            "{} ingress rules; the limit is {MAX_RULES}",
            rules.len()
        ));
    }
    rules.iter().try_for_each(validate_rule)
}

fn validate_dns(dns: &[String]) -> Result<(), String> {
    if dns.len() > MAX_DNS {
        return Err(format!("{} DNS servers; the limit is {MAX_DNS}", dns.len()));
    }
    dns.iter()
        .try_for_each(|d| parse_ipv4("DNS server", d).map(|_| ()))
}

fn validate_peers(peers: &[String]) -> Result<(), String> {
    if peers.len() > MAX_PEERS {
        return Err(format!(
            "{} VXLAN peers; the limit is {MAX_PEERS}",
            peers.len()
        ));
    }
    for peer in peers {
        parse_underlay_address("VXLAN peer", peer)?;
    }
    Ok(())
}

/// A tunnel endpoint: IPv4 (the VXLAN links are made with IPv4 underlays only, for now).
fn parse_underlay_address(what: &str, s: &str) -> Result<Ipv4Addr, String> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(format!(
            "{what} {s} is IPv6; VXLAN tunnels run over IPv4 underlays only for now"
        )),
        Err(_) => Err(format!("{what} {s:?} is not an IPv4 address")),
    }
}

/// Refuses a field that means nothing for the kind (so a typo'd intent is not silently dropped).
fn refuse(kind: NetworkKind, field: &str, present: bool) -> Result<(), String> {
    if present {
        return Err(format!(
            "{field} does not apply to {} networks",
            kind.as_str()
        ));
    }
    Ok(())
}

/// Builds and checks a network from a create request. `existing` are the other networks: a
/// subnet may not overlap theirs, nor a VNI repeat.
pub fn network_from_create(
    req: &CreateNetworkRequest,
    existing: &[Network],
    created_at_ms: u64,
) -> Result<Network, String> {
    validate_network_name(&req.name)?;
    let kind = req.kind;
    check_kind_fields(req)?;
    let subnet = req
        .subnet
        .as_deref()
        .map(str::parse::<Ipv4Cidr>)
        .transpose()?;
    if let Some(subnet) = subnet {
        if !(16..=29).contains(&subnet.prefix) {
            return Err(format!(
                "subnet {subnet} is /{}; use a prefix from /16 to /29",
                subnet.prefix
            ));
        }
    }
    let gateway = gateway_of(req, subnet)?;
    let range = range_of(req.range.as_deref(), subnet)?;
    let dhcp = req.dhcp.unwrap_or(kind == NetworkKind::Managed);
    if dhcp && gateway.is_none() {
        return Err(
            "DHCP needs a gateway address on the bridge to answer from; give --gateway or turn DHCP off"
                .into(),
        );
    }
    if req.uplink.is_some() && gateway.is_none() {
        return Err(
            "NAT through an uplink needs a gateway address on the bridge; give --gateway".into(),
        );
    }
    if let Some(uplink) = &req.uplink {
        validate_ifname("uplink", uplink)?;
    }
    validate_dns(&req.dns)?;
    validate_peers(&req.peers)?;
    validate_rules(&req.ingress)?;
    let mtu = req.mtu.unwrap_or(if kind == NetworkKind::Vxlan {
        1450
    } else {
        1500
    });
    if !(576..=9000).contains(&mtu) {
        return Err(format!("MTU {mtu} is not 576 to 9000"));
    }
    let bridge = match kind {
        NetworkKind::User => None,
        NetworkKind::Bridge => req.bridge.clone(),
        NetworkKind::Managed | NetworkKind::Vxlan => Some(bridge_name(&req.name)),
    };
    let network = Network {
        name: req.name.clone(),
        project: req.project.clone().unwrap_or_else(|| "default".into()),
        kind,
        bridge,
        subnet: subnet.map(|s| s.to_string()),
        gateway: gateway.map(|g| g.to_string()),
        range: range.map(|(a, b)| format!("{a}-{b}")),
        dhcp,
        dns: req.dns.clone(),
        uplink: req.uplink.clone(),
        vni: req.vni,
        peers: req.peers.clone(),
        local: req.local.clone(),
        underlay: req.underlay.clone(),
        mtu,
        ingress_policy: req.ingress_policy,
        ingress: req.ingress.clone(),
        used_by: Vec::new(),
        created_at_ms,
    };
    check_against_existing(&network, existing)?;
    Ok(network)
}

fn check_kind_fields(req: &CreateNetworkRequest) -> Result<(), String> {
    let kind = req.kind;
    match kind {
        NetworkKind::User => {
            refuse(kind, "a bridge", req.bridge.is_some())?;
            refuse(kind, "a subnet", req.subnet.is_some())?;
            refuse(kind, "a gateway", req.gateway.is_some())?;
            refuse(kind, "an uplink", req.uplink.is_some())?;
            refuse(kind, "DHCP", req.dhcp == Some(true))?;
            refuse(kind, "a range", req.range.is_some())?;
        }
        NetworkKind::Bridge => {
            let bridge = req.bridge.as_deref().ok_or(
                "a bridge network needs the host bridge to join: --bridge br0 (see `ip link show type bridge`)",
            )?;
            validate_ifname("bridge", bridge)?;
            refuse(kind, "DHCP", req.dhcp == Some(true))?;
            refuse(kind, "an uplink", req.uplink.is_some())?;
            refuse(kind, "a gateway", req.gateway.is_some())?;
        }
        NetworkKind::Managed => {
            refuse(kind, "a bridge", req.bridge.is_some())?;
            if req.subnet.is_none() {
                return Err(
                    "a managed network needs a subnet: --subnet 10.50.0.0/24 (a private range not used on this host)"
                        .into(),
                );
            }
        }
        NetworkKind::Vxlan => {
            refuse(kind, "a bridge", req.bridge.is_some())?;
            match req.vni {
                Some(vni) if (1..=VNI_MAX).contains(&vni) => {}
                Some(vni) => return Err(format!("VNI {vni} is not 1 to {VNI_MAX}")),
                None => return Err("a vxlan network needs a VNI: --vni 100".into()),
            }
            if let Some(local) = &req.local {
                parse_underlay_address("local address", local)?;
            }
            if let Some(underlay) = &req.underlay {
                validate_ifname("underlay", underlay)?;
            }
        }
    }
    if kind != NetworkKind::Vxlan {
        refuse(kind, "a VNI", req.vni.is_some())?;
        refuse(kind, "VXLAN peers", !req.peers.is_empty())?;
        refuse(kind, "a local tunnel address", req.local.is_some())?;
        refuse(kind, "an underlay", req.underlay.is_some())?;
    }
    Ok(())
}

fn gateway_of(
    req: &CreateNetworkRequest,
    subnet: Option<Ipv4Cidr>,
) -> Result<Option<Ipv4Addr>, String> {
    let gateway = match (&req.gateway, subnet) {
        (Some(g), Some(subnet)) => {
            let g = parse_ipv4("gateway", g)?;
            if !subnet.is_host(g) {
                return Err(format!(
                    "gateway {g} is not a host address of subnet {subnet}"
                ));
            }
            Some(g)
        }
        (Some(_), None) => return Err("a gateway needs a subnet".into()),
        (None, Some(subnet)) if req.kind == NetworkKind::Managed => Some(subnet.first_host()),
        (None, _) => None,
    };
    Ok(gateway)
}

fn range_of(
    range: Option<&str>,
    subnet: Option<Ipv4Cidr>,
) -> Result<Option<(Ipv4Addr, Ipv4Addr)>, String> {
    let Some(range) = range else {
        return Ok(None);
    };
    let subnet = subnet.ok_or("a range needs a subnet")?;
    let (first, last) = parse_range(range)?;
    if !subnet.is_host(first) || !subnet.is_host(last) {
        return Err(format!(
            "range {range} is not inside the host addresses of {subnet}"
        ));
    }
    Ok(Some((first, last)))
}

fn check_against_existing(network: &Network, existing: &[Network]) -> Result<(), String> {
    let subnet: Option<Ipv4Cidr> = network.subnet.as_deref().and_then(|s| s.parse().ok());
    for other in existing.iter().filter(|o| o.name != network.name) {
        let other_subnet: Option<Ipv4Cidr> = other.subnet.as_deref().and_then(|s| s.parse().ok());
        if let (Some(a), Some(b)) = (subnet, other_subnet) {
            if a.overlaps(b) {
                return Err(format!(
                    "subnet {a} overlaps subnet {b} of network {:?}; choose a subnet that does not",
                    other.name
                ));
            }
        }
        if network.kind == NetworkKind::Bridge && network.bridge == other.bridge {
            return Err(format!(
                "network {:?} already uses bridge {:?}; one network per host bridge",
                other.name,
                network.bridge.as_deref().unwrap_or_default()
            ));
        }
        if network.vni.is_some() && network.vni == other.vni {
            return Err(format!(
                "VNI {} is already used by network {:?}; choose another",
                network.vni.unwrap_or_default(),
                other.name
            ));
        }
    }
    Ok(())
}

/// Applies an update to a network.
pub fn apply_network_update(
    network: &Network,
    update: &UpdateNetworkRequest,
) -> Result<Network, String> {
    let mut new = network.clone();
    if let Some(policy) = update.ingress_policy {
        new.ingress_policy = policy;
    }
    if let Some(rules) = &update.ingress {
        validate_rules(rules)?;
        new.ingress = dedup_rules(rules);
    }
    if let Some(peers) = &update.peers {
        refuse(
            network.kind,
            "VXLAN peers",
            network.kind != NetworkKind::Vxlan,
        )?;
        validate_peers(peers)?;
        new.peers = peers.clone();
    }
    if let Some(dns) = &update.dns {
        validate_dns(dns)?;
        new.dns = dns.clone();
    }
    Ok(new)
}

fn dedup_rules(rules: &[IngressRule]) -> Vec<IngressRule> {
    let mut seen = HashSet::new();
    rules
        .iter()
        .filter(|r| seen.insert((*r).clone()))
        .cloned()
        .collect()
}

/// The addresses a network hands out, first to last.
pub fn allocation_range(network: &Network) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let subnet: Ipv4Cidr = network.subnet.as_deref()?.parse().ok()?;
    match network.range.as_deref().map(parse_range) {
        Some(Ok(range)) => Some(range),
        _ => Some((subnet.first_host(), subnet.last_host())),
    }
}

/// The address for a new NIC: the requested one if it is free and in the subnet, or else the
/// lowest free one of the range. `taken` holds the addresses other NICs have.
pub fn assign_address(
    network: &Network,
    requested: Option<&str>,
    taken: &HashSet<Ipv4Addr>,
) -> Result<Option<Ipv4Addr>, String> {
    let Some(subnet) = network
        .subnet
        .as_deref()
        .map(str::parse::<Ipv4Cidr>)
        .transpose()?
    else {
        return match requested {
            Some(_) => Err(format!(
                "network {:?} has no subnet, so its NICs get no address from Vessel",
                network.name
            )),
            None => Ok(None),
        };
    };
    let gateway: Option<Ipv4Addr> = network.gateway.as_deref().and_then(|g| g.parse().ok());
    if let Some(requested) = requested {
        let ip = parse_ipv4("address", requested)?;
        if !subnet.is_host(ip) {
            return Err(format!(
                "address {ip} is not a host address of subnet {subnet}"
            ));
        }
        if Some(ip) == gateway {
            return Err(format!("address {ip} is the network's gateway"));
        }
        if taken.contains(&ip) {
            return Err(format!(
                "address {ip} is already used by another NIC on network {:?}",
                network.name
            ));
        }
        return Ok(Some(ip));
    }
    let (first, last) =
        allocation_range(network).unwrap_or((subnet.first_host(), subnet.last_host()));
    (u32::from(first)..=u32::from(last))
        .map(Ipv4Addr::from)
        .find(|ip| Some(*ip) != gateway && !taken.contains(ip))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "network {:?} has no free address left in {first}-{last}; remove NICs or widen its range",
                network.name
            )
        })
}

/// The lowest unused NIC id (`nic0`, `nic1`, ...).
pub fn next_nic_id(spec: &VmSpec) -> String {
    (0..)
        .map(|i| format!("nic{i}"))
        .find(|id| !spec.nics.iter().any(|n| &n.id == id))
        .expect("an unused id exists")
}

/// The inputs of a new NIC that the daemon decided (MAC, address), with the request.
#[derive(Debug, Clone)]
pub struct NicChoice<'a> {
    pub request: &'a AddNicRequest,
    pub network: &'a Network,
    pub mac: String,
    pub ipv4: Option<Ipv4Addr>,
}

/// The VM's spec with the NIC added. `macs_in_use` are the MACs of every other NIC on the host.
pub fn add_nic(
    spec: &VmSpec,
    choice: &NicChoice<'_>,
    macs_in_use: &HashSet<String>,
) -> Result<(VmSpec, VmNic), String> {
    if spec.nics.len() >= MAX_NICS {
        return Err(format!(
            "VM {:?} has {MAX_NICS} NICs, the most it can have",
            spec.name
        ));
    }
    let mac = format_mac(parse_mac(&choice.mac)?);
    if macs_in_use.contains(&mac) || spec.nics.iter().any(|n| n.mac == mac) {
        return Err(format!(
            "MAC address {mac} is already used by another NIC; leave --mac out to get a free one"
        ));
    }
    if let Some(mbit) = choice.request.bandwidth_mbit {
        if mbit == 0 || mbit > 100_000 {
            return Err(format!("bandwidth limit {mbit} Mbit/s is not 1 to 100000"));
        }
    }
    let id = next_nic_id(spec);
    let nic = VmNic {
        tap: tap_name(&spec.name, &id),
        id,
        network: choice.network.name.clone(),
        mac,
        ipv4: choice.ipv4.map(|ip| ip.to_string()),
        bandwidth_mbit: choice.request.bandwidth_mbit,
        port_security: !choice.request.no_port_security,
    };
    let mut new = spec.clone();
    new.nics.push(nic.clone());
    Ok((new, nic))
}

/// The VM's spec without the NIC named by its id or MAC.
pub fn remove_nic(spec: &VmSpec, nic: &str) -> Result<(VmSpec, VmNic), String> {
    let position = spec
        .nics
        .iter()
        .position(|n| n.id == nic || n.mac.eq_ignore_ascii_case(nic))
        .ok_or_else(|| {
            format!(
                "VM {:?} has no NIC {nic:?}; see `vessel vm nic list {}`",
                spec.name, spec.name
            )
        })?;
    let mut new = spec.clone();
    let removed = new.nics.remove(position);
    Ok((new, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::IngressPolicy;

    fn managed(name: &str, subnet: &str) -> CreateNetworkRequest {
        CreateNetworkRequest {
            name: name.into(),
            kind: NetworkKind::Managed,
            project: None,
            bridge: None,
            subnet: Some(subnet.into()),
            gateway: None,
            range: None,
            dhcp: None,
            dns: vec![],
            uplink: None,
            vni: None,
            peers: vec![],
            local: None,
            underlay: None,
            mtu: None,
            ingress_policy: IngressPolicy::Allow,
            ingress: vec![],
        }
    }

    fn vxlan(name: &str, vni: u32) -> CreateNetworkRequest {
        CreateNetworkRequest {
            kind: NetworkKind::Vxlan,
            subnet: None,
            vni: Some(vni),
            peers: vec!["192.168.77.2".into()],
            ..managed(name, "10.0.0.0/24")
        }
    }

    #[test]
    fn tenant_subnets_must_be_private() {
        for ok in [
            "10.50.0.0/24",
            "172.16.0.0/16",
            "172.31.255.0/24",
            "192.168.7.0/24",
            "100.64.0.0/16",
            "100.127.255.248/29",
            "not a subnet",
        ] {
            assert_eq!(check_tenant_subnet(ok), Ok(()), "{ok}");
        }
        for bad in [
            "198.51.100.0/24",
            "172.32.0.0/16",
            "100.128.0.0/16",
            "8.8.8.0/24",
            "192.169.0.0/16",
            "10.0.0.0/7",
        ] {
            let err = check_tenant_subnet(bad).unwrap_err();
            assert!(
                err.contains("not a private range") && err.contains("10.0.0.0/8"),
                "{err}"
            );
        }
    }

    #[test]
    fn cidr_parses_and_knows_its_hosts() {
        let c: Ipv4Cidr = "10.50.0.0/24".parse().unwrap();
        assert_eq!(c.first_host(), Ipv4Addr::new(10, 50, 0, 1));
        assert_eq!(c.last_host(), Ipv4Addr::new(10, 50, 0, 254));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 50, 0, 255));
        assert!(c.is_host(Ipv4Addr::new(10, 50, 0, 9)));
        assert!(!c.is_host(Ipv4Addr::new(10, 50, 0, 0)));
        assert!(!c.is_host(Ipv4Addr::new(10, 50, 1, 1)));
        let err = "10.50.0.1/24".parse::<Ipv4Cidr>().unwrap_err();
        assert!(err.contains("10.50.0.0/24"), "{err}");
        assert!("10.50.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.50.0.0/33".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn overlapping_subnets_are_refused_and_name_the_other_network() {
        let a = network_from_create(&managed("a", "10.50.0.0/24"), &[], 0).unwrap();
        let err = network_from_create(&managed("b", "10.50.0.0/16"), std::slice::from_ref(&a), 0)
            .unwrap_err();
        assert!(err.contains("overlaps") && err.contains("\"a\""), "{err}");
        assert!(network_from_create(&managed("c", "10.51.0.0/24"), &[a], 0).is_ok());
    }

    #[test]
    fn managed_network_defaults() {
        let n = network_from_create(&managed("lan", "10.50.0.0/24"), &[], 7).unwrap();
        assert_eq!(n.gateway.as_deref(), Some("10.50.0.1"));
        assert_eq!(n.bridge.as_deref(), Some("vb-lan"));
        assert!(n.dhcp);
        assert_eq!(n.mtu, 1500);
    }

    #[test]
    fn bad_networks_are_refused_with_reasons() {
        let long = managed("abcdefghijklm", "10.50.0.0/24");
        assert!(network_from_create(&long, &[], 0)
            .unwrap_err()
            .contains("limit is 12"));
        let mut no_subnet = managed("x", "10.50.0.0/24");
        no_subnet.subnet = None;
        assert!(network_from_create(&no_subnet, &[], 0)
            .unwrap_err()
            .contains("--subnet"));
        let mut gw = managed("x", "10.50.0.0/24");
        gw.gateway = Some("10.60.0.1".into());
        assert!(network_from_create(&gw, &[], 0)
            .unwrap_err()
            .contains("not a host address"));
        let mut user = managed("x", "10.50.0.0/24");
        user.kind = NetworkKind::User;
        assert!(network_from_create(&user, &[], 0)
            .unwrap_err()
            .contains("does not apply"));
        let mut vni = vxlan("v", 0);
        assert!(network_from_create(&vni, &[], 0)
            .unwrap_err()
            .contains("VNI"));
        vni.vni = None;
        assert!(network_from_create(&vni, &[], 0)
            .unwrap_err()
            .contains("--vni"));
        let mut rule = managed("x", "10.50.0.0/24");
        rule.ingress = vec![IngressRule {
            protocol: RuleProtocol::Icmp,
            ports: Some("80".into()),
            source: None,
        }];
        assert!(network_from_create(&rule, &[], 0)
            .unwrap_err()
            .contains("ports are for tcp"));
        let mut bridge = managed("x", "10.50.0.0/24");
        bridge.kind = NetworkKind::Bridge;
        bridge.subnet = None;
        assert!(network_from_create(&bridge, &[], 0)
            .unwrap_err()
            .contains("--bridge"));
        bridge.bridge = Some("a-very-long-bridge-name".into());
        assert!(network_from_create(&bridge, &[], 0)
            .unwrap_err()
            .contains("1 to 15"));
    }

    #[test]
    fn a_vni_in_use_is_refused() {
        let a = network_from_create(&vxlan("a", 100), &[], 0).unwrap();
        assert_eq!(a.mtu, 1450);
        assert!(!a.dhcp);
        let err = network_from_create(&vxlan("b", 100), &[a], 0).unwrap_err();
        assert!(err.contains("VNI 100 is already used"), "{err}");
    }

    #[test]
    fn addresses_are_assigned_lowest_first_skipping_gateway_and_taken() {
        let n = network_from_create(&managed("lan", "10.50.0.0/29"), &[], 0).unwrap();
        let mut taken = HashSet::new();
        let first = assign_address(&n, None, &taken).unwrap().unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 50, 0, 2));
        taken.insert(first);
        assert_eq!(
            assign_address(&n, None, &taken).unwrap(),
            Some(Ipv4Addr::new(10, 50, 0, 3))
        );
        let err = assign_address(&n, Some("10.50.0.2"), &taken).unwrap_err();
        assert!(err.contains("already used"), "{err}");
        assert!(assign_address(&n, Some("10.50.0.1"), &taken)
            .unwrap_err()
            .contains("gateway"));
        assert!(assign_address(&n, Some("10.50.0.7"), &taken)
            .unwrap_err()
            .contains("not a host"));
        for last in 3..=6 {
            taken.insert(Ipv4Addr::new(10, 50, 0, last));
        }
        assert!(assign_address(&n, None, &taken)
            .unwrap_err()
            .contains("no free address"));
    }

    #[test]
    fn a_range_limits_assignment() {
        let mut req = managed("lan", "10.50.0.0/24");
        req.range = Some("10.50.0.100-10.50.0.101".into());
        let n = network_from_create(&req, &[], 0).unwrap();
        let mut taken = HashSet::new();
        let a = assign_address(&n, None, &taken).unwrap().unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 50, 0, 100));
        taken.insert(a);
        taken.insert(Ipv4Addr::new(10, 50, 0, 101));
        assert!(assign_address(&n, None, &taken).is_err());
        req.range = Some("10.60.0.1-10.60.0.2".into());
        assert!(network_from_create(&req, &[], 0).is_err());
    }

    #[test]
    fn macs_must_be_unicast_and_well_formed() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:01").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 1]
        );
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_mac("00:00:00:00:00:00").is_err());
        assert!(parse_mac("52:54:00:ab:cd").is_err());
        assert!(parse_mac("52:54:00:ab:cd:zz").is_err());
        assert_eq!(mac_from_random([1, 2, 3]), "52:54:00:01:02:03");
    }

    #[test]
    fn tap_names_fit_the_kernel_limit_and_differ() {
        let a = tap_name("web1", "nic0");
        let b = tap_name("web1", "nic1");
        let c = tap_name("web10", "nic0");
        assert!(a.len() <= IFNAME_MAX && a.starts_with("vt"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, tap_name("web1", "nic0"));
    }

    #[test]
    fn ports_parse() {
        assert_eq!(parse_ports("80").unwrap(), (80, 80));
        assert_eq!(parse_ports("8000-8099").unwrap(), (8000, 8099));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("90-80").is_err());
        assert!(parse_ports("http").is_err());
    }

    #[test]
    fn update_replaces_rules_and_refuses_peers_on_non_vxlan() {
        let n = network_from_create(&managed("lan", "10.50.0.0/24"), &[], 0).unwrap();
        let rule = IngressRule {
            protocol: RuleProtocol::Tcp,
            ports: Some("22".into()),
            source: None,
        };
        let update = UpdateNetworkRequest {
            ingress_policy: Some(IngressPolicy::Deny),
            ingress: Some(vec![rule.clone(), rule.clone()]),
            ..Default::default()
        };
        let new = apply_network_update(&n, &update).unwrap();
        assert_eq!(new.ingress, vec![rule]);
        assert_eq!(new.ingress_policy, IngressPolicy::Deny);
        let peers = UpdateNetworkRequest {
            peers: Some(vec!["10.0.0.2".into()]),
            ..Default::default()
        };
        assert!(apply_network_update(&n, &peers).is_err());
    }
}
