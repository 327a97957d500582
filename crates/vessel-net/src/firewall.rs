//! The nftables firewall: port security (anti-spoofing), security-group style ingress filtering
//! and NAT for VM networks.
//!
//! [`render`] turns a plain [`FirewallPlan`] into a complete nft script (pure, unit-tested);
//! [`apply`] loads it in one `nft -f -` transaction that deletes and recreates only Vessel's own
//! tables, `table bridge vessel` and `table inet vessel`, so a half-applied ruleset never exists
//! and no other table is touched; [`remove_all`] deletes just those two tables.
//!
//! # Where each rule lives, and why
//! - **Port security** is in the bridge family, which sees every frame with the bridge port it
//!   came from (`iifname <tap>`): in the `forward` hook (guest to guest, guest to uplink) and in
//!   the `input` hook (guest to the host itself, e.g. its gateway address), so a guest can spoof
//!   neither towards other guests nor towards the host.
//! - **Ingress filtering** (traffic *to* a port, `oifname <tap>`) is in the bridge family too,
//!   in `forward` (from other guests, VXLAN peers, routed traffic) and `output` (frames the host
//!   itself sends out of the bridge, including NATed replies).
//! - **"Replies are allowed"** needs connection tracking, but `ct` expressions in the bridge
//!   family need `nf_conntrack_bridge`, which many kernels lack (this project's test kernel
//!   among them: loading `ct state` into a bridge table fails with "Protocol error"). Bridged
//!   IPv4 does pass conntrack through `br_netfilter` (`net.bridge.bridge-nf-call-iptables=1`,
//!   see [`crate::sysctl::enable_bridge_conntrack`]), whose IPv4 hooks run *before* the bridge
//!   `forward`/`output` hooks. So the inet table's `prerouting` and `output` chains copy "this
//!   packet is established or related" into one bit of the packet mark, [`ESTABLISHED_MARK`],
//!   and the bridge rules test that bit. The bit is cleared first, so a mark left by someone
//!   else cannot open the door.
//! - **NAT** is in the inet family (`postrouting` masquerade from the subnet out of the uplink;
//!   `forward` accepts bridge -> uplink and only established/related uplink -> bridge).
//!
//! # IPv6
//! Ports with port security may not send IPv6 at all, and ports with default-deny ingress
//! receive none: neighbour discovery and addresses are not modelled yet, and dropping is the
//! safe default until they are.
//!
//! # A consequence of br_netfilter
//! With `bridge-nf-call-iptables=1`, bridged IPv4 also passes every other table's IPv4
//! `forward` hooks (e.g. Docker's `FORWARD` policy drop): a host that runs such rules must
//! accept traffic of Vessel's bridges there.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::cidr::Ipv4Cidr;
use crate::command;
use crate::name::validate_ifname;
use crate::{Error, Result};

/// The name of Vessel's tables (one in the bridge family, one in inet).
pub const TABLE: &str = "vessel";

/// The packet-mark bit that carries "conntrack says established/related" from the inet hooks
/// to the bridge hooks. Chosen away from the bits Kubernetes (0x4000, 0x8000) and common CNIs
/// use in the low 16 bits.
pub const ESTABLISHED_MARK: u32 = 0x0040_0000;

const NFT_HINT: &str = "install nftables (apt-get install nftables)";

/// Everything Vessel filters on one host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallPlan {
    pub bridges: Vec<BridgePlan>,
}

/// One VM network: a Linux bridge and the VM ports on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgePlan {
    /// The Linux bridge.
    pub bridge: String,
    /// The network's IPv4 subnet (needed for NAT).
    pub subnet: Option<Ipv4Cidr>,
    /// Masquerade traffic from `subnet` leaving through this uplink, and allow forwarding
    /// bridge -> uplink (and only replies back).
    pub nat_uplink: Option<String>,
    /// Security-group style: traffic into VM ports is dropped unless it is a reply
    /// (established/related), ARP, a DHCP reply or matches an [`IngressRule`].
    pub ingress_default_deny: bool,
    /// What may enter the ports when `ingress_default_deny` is set.
    pub ingress: Vec<IngressRule>,
    /// The VM NICs (taps) on this bridge.
    pub ports: Vec<PortPlan>,
}

/// Traffic allowed into the VM ports of a default-deny network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRule {
    pub proto: Protocol,
    /// An inclusive destination port range; only for TCP, UDP and `Any` (TCP and UDP then).
    pub ports: Option<(u16, u16)>,
    /// Only from this source network; from anywhere when `None`.
    pub source: Option<Ipv4Cidr>,
}

/// The IPv4 protocol an [`IngressRule`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// One VM NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    /// The tap (bridge port) name.
    pub ifname: String,
    /// The MAC the guest must use.
    pub mac: [u8; 6],
    /// The IPv4 address the guest must use; before it has one, only DHCP gets out.
    pub ipv4: Option<Ipv4Addr>,
    /// Whether the anti-spoofing rules apply to this port.
    pub port_security: bool,
}

/// Loads `plan`, replacing Vessel's previous tables in one transaction. Also turns on bridge
/// conntrack when a network uses default-deny ingress (see the module docs).
pub async fn apply(plan: &FirewallPlan) -> Result<()> {
    let script = render(plan)?;
    if plan.bridges.iter().any(|b| b.ingress_default_deny) {
        crate::sysctl::enable_bridge_conntrack()?;
    }
    nft_script(&script).await
}

/// Deletes Vessel's tables (and nothing else); a no-op when they do not exist.
pub async fn remove_all() -> Result<()> {
    nft_script(&reset_tables()).await
}

/// Runs `nft -f -` with `script` (one atomic transaction).
pub async fn nft_script(script: &str) -> Result<()> {
    command::run("nft", NFT_HINT, &["-f", "-"], Some(script)).await?;
    Ok(())
}

/// `nft list ruleset`, for diagnostics and tests.
pub async fn list_ruleset() -> Result<String> {
    command::run("nft", NFT_HINT, &["list", "ruleset"], None).await
}

/// Renders the complete nft script for `plan`: it first deletes Vessel's tables (creating them
/// first so that the delete cannot fail), then declares them anew.
pub fn render(plan: &FirewallPlan) -> Result<String> {
    validate(plan)?;
    let mut out = reset_tables();
    if plan.bridges.is_empty() {
        return Ok(out);
    }
    render_bridge_table(plan, &mut out);
    render_inet_table(plan, &mut out);
    Ok(out)
}

fn reset_tables() -> String {
    let mut out = String::new();
    for family in ["bridge", "inet"] {
        let _ = writeln!(out, "add table {family} {TABLE}");
        let _ = writeln!(out, "delete table {family} {TABLE}");
    }
    out
}

fn validate(plan: &FirewallPlan) -> Result<()> {
    for bridge in &plan.bridges {
        validate_ifname(&bridge.bridge)?;
        if let Some(uplink) = &bridge.nat_uplink {
            validate_ifname(uplink)?;
            if bridge.subnet.is_none() {
                return Err(invalid_plan(
                    &bridge.bridge,
                    "NAT needs the bridge's subnet",
                ));
            }
        }
        for port in &bridge.ports {
            validate_ifname(&port.ifname)?;
        }
        for rule in &bridge.ingress {
            validate_rule(&bridge.bridge, rule)?;
        }
    }
    Ok(())
}

fn validate_rule(bridge: &str, rule: &IngressRule) -> Result<()> {
    match (rule.proto, rule.ports) {
        (Protocol::Icmp, Some(_)) => Err(invalid_plan(bridge, "an ICMP rule cannot have ports")),
        (_, Some((from, to))) if from == 0 || from > to => Err(invalid_plan(
            bridge,
            "a port range must be `from..=to` with 1 <= from <= to",
        )),
        _ => Ok(()),
    }
}

fn invalid_plan(bridge: &str, reason: &str) -> Error {
    Error::InvalidPlan {
        bridge: bridge.to_string(),
        reason: reason.to_string(),
    }
}

fn secured_ports(plan: &FirewallPlan) -> impl Iterator<Item = &PortPlan> {
    plan.bridges
        .iter()
        .flat_map(|b| b.ports.iter())
        .filter(|p| p.port_security)
}

fn guarded_ports(plan: &FirewallPlan) -> impl Iterator<Item = (&BridgePlan, &PortPlan)> {
    plan.bridges
        .iter()
        .filter(|b| b.ingress_default_deny)
        .flat_map(|b| b.ports.iter().map(move |p| (b, p)))
}

fn render_bridge_table(plan: &FirewallPlan, out: &mut String) {
    let _ = writeln!(out, "table bridge {TABLE} {{");
    // Dispatch: frames from a secured port to its `from_` chain, frames to a guarded port to its
    // `to_` chain. A chain `return`s what it lets through.
    let mut forward = String::new();
    let mut input = String::new();
    let mut output = String::new();
    for port in secured_ports(plan) {
        let jump = format!("\t\tiifname \"{0}\" jump from_{0}\n", port.ifname);
        forward.push_str(&jump);
        input.push_str(&jump);
    }
    for (_, port) in guarded_ports(plan) {
        let jump = format!("\t\toifname \"{0}\" jump to_{0}\n", port.ifname);
        forward.push_str(&jump);
        output.push_str(&jump);
    }
    for (hook, body) in [("forward", forward), ("input", input), ("output", output)] {
        let _ = writeln!(out, "\tchain {hook} {{");
        let _ = writeln!(
            out,
            "\t\ttype filter hook {hook} priority filter; policy accept;"
        );
        out.push_str(&body);
        let _ = writeln!(out, "\t}}");
    }
    for port in secured_ports(plan) {
        render_from_port(port, out);
    }
    for (bridge, port) in guarded_ports(plan) {
        render_to_port(bridge, port, out);
    }
    let _ = writeln!(out, "}}");
}

/// Anti-spoofing for frames a guest sends.
fn render_from_port(port: &PortPlan, out: &mut String) {
    let mac = format_mac(&port.mac);
    let _ = writeln!(out, "\tchain from_{} {{", port.ifname);
    let _ = writeln!(out, "\t\tether saddr != {mac} counter drop");
    let _ = writeln!(out, "\t\tether type != {{ ip, arp }} counter drop");
    let _ = writeln!(out, "\t\tarp saddr ether != {mac} counter drop");
    // DHCP discover/request before the guest has (or while it renews without) an address.
    let _ = writeln!(
        out,
        "\t\tip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return"
    );
    match port.ipv4 {
        Some(ip) => {
            // 0.0.0.0 is the sender of an ARP probe (address conflict detection).
            let _ = writeln!(out, "\t\tarp saddr ip != {{ {ip}, 0.0.0.0 }} counter drop");
            let _ = writeln!(out, "\t\tip saddr != {ip} counter drop");
        }
        None => {
            let _ = writeln!(out, "\t\tarp saddr ip != 0.0.0.0 counter drop");
            let _ = writeln!(out, "\t\tether type ip counter drop");
        }
    }
    let _ = writeln!(out, "\t}}");
}

/// Security-group style filtering of what reaches a guest.
fn render_to_port(bridge: &BridgePlan, port: &PortPlan, out: &mut String) {
    let _ = writeln!(out, "\tchain to_{} {{", port.ifname);
    let _ = writeln!(
        out,
        "\t\tmeta mark & {ESTABLISHED_MARK:#010x} == {ESTABLISHED_MARK:#010x} return"
    );
    let _ = writeln!(out, "\t\tether type arp return");
    let _ = writeln!(out, "\t\tip protocol udp udp sport 67 udp dport 68 return");
    for rule in &bridge.ingress {
        let _ = writeln!(out, "\t\t{} return", rule_match(rule));
    }
    let _ = writeln!(out, "\t\tcounter drop");
    let _ = writeln!(out, "\t}}");
}

fn rule_match(rule: &IngressRule) -> String {
    let mut m = String::from("ether type ip");
    if let Some(source) = rule.source {
        let _ = write!(m, " ip saddr {}", source.network());
    }
    let ports = rule.ports.map(|(from, to)| {
        if from == to {
            from.to_string()
        } else {
            format!("{from}-{to}")
        }
    });
    match (rule.proto, ports) {
        (Protocol::Tcp, p) => push_l4(&mut m, "tcp", "tcp dport", p),
        (Protocol::Udp, p) => push_l4(&mut m, "udp", "udp dport", p),
        (Protocol::Icmp, _) => m.push_str(" ip protocol icmp"),
        (Protocol::Any, Some(p)) => push_l4(&mut m, "{ tcp, udp }", "th dport", Some(p)),
        (Protocol::Any, None) => {}
    }
    m
}

fn push_l4(m: &mut String, proto: &str, dport: &str, ports: Option<String>) {
    let _ = write!(m, " ip protocol {proto}");
    if let Some(ports) = ports {
        let _ = write!(m, " {dport} {ports}");
    }
}

fn render_inet_table(plan: &FirewallPlan, out: &mut String) {
    let _ = writeln!(out, "table inet {TABLE} {{");
    if plan.bridges.iter().any(|b| b.ingress_default_deny) {
        // After conntrack (priority -200), before anything that filters.
        for hook in ["prerouting", "output"] {
            let _ = writeln!(out, "\tchain ct_{hook} {{");
            let _ = writeln!(
                out,
                "\t\ttype filter hook {hook} priority -150; policy accept;"
            );
            let _ = writeln!(
                out,
                "\t\tmeta mark set meta mark & {:#010x}",
                !ESTABLISHED_MARK
            );
            let _ = writeln!(
                out,
                "\t\tct state established,related meta mark set meta mark | {ESTABLISHED_MARK:#010x}"
            );
            let _ = writeln!(out, "\t}}");
        }
    }
    let nat: Vec<(&BridgePlan, &str, Ipv4Cidr)> = plan
        .bridges
        .iter()
        .filter_map(|b| Some((b, b.nat_uplink.as_deref()?, b.subnet?.network())))
        .collect();
    if !nat.is_empty() {
        let _ = writeln!(out, "\tchain forward {{");
        let _ = writeln!(
            out,
            "\t\ttype filter hook forward priority filter; policy accept;"
        );
        for (b, uplink, subnet) in &nat {
            let br = &b.bridge;
            let _ = writeln!(
                out,
                "\t\tiifname \"{br}\" oifname \"{uplink}\" ip saddr {subnet} accept"
            );
            let _ = writeln!(
                out,
                "\t\tiifname \"{uplink}\" oifname \"{br}\" ct state established,related accept"
            );
            let _ = writeln!(
                out,
                "\t\tiifname \"{uplink}\" oifname \"{br}\" counter drop"
            );
        }
        let _ = writeln!(out, "\t}}");
        let _ = writeln!(out, "\tchain postrouting {{");
        let _ = writeln!(
            out,
            "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        );
        for (_, uplink, subnet) in &nat {
            let _ = writeln!(
                out,
                "\t\toifname \"{uplink}\" ip saddr {subnet} ip daddr != {subnet} masquerade"
            );
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(ifname: &str, ipv4: Option<&str>) -> PortPlan {
        PortPlan {
            ifname: ifname.to_string(),
            mac: [0x52, 0x54, 0, 0xab, 0xcd, 0x01],
            ipv4: ipv4.map(|s| s.parse().unwrap()),
            port_security: true,
        }
    }

    fn bridge() -> BridgePlan {
        BridgePlan {
            bridge: "vbr0".to_string(),
            subnet: Some("10.50.0.1/24".parse().unwrap()),
            nat_uplink: None,
            ingress_default_deny: false,
            ingress: Vec::new(),
            ports: vec![port("vt0", Some("10.50.0.10"))],
        }
    }

    fn plan(b: BridgePlan) -> FirewallPlan {
        FirewallPlan { bridges: vec![b] }
    }

    #[test]
    fn empty_plan_only_removes_vessels_tables() {
        let script = render(&FirewallPlan::default()).unwrap();
        assert_eq!(
            script,
            "add table bridge vessel\ndelete table bridge vessel\n\
             add table inet vessel\ndelete table inet vessel\n"
        );
    }

    #[test]
    fn port_security_checks_mac_ip_and_arp_in_forward_and_input() {
        let script = render(&plan(bridge())).unwrap();
        for line in [
            "iifname \"vt0\" jump from_vt0",
            "ether saddr != 52:54:00:ab:cd:01 counter drop",
            "arp saddr ether != 52:54:00:ab:cd:01 counter drop",
            "arp saddr ip != { 10.50.0.10, 0.0.0.0 } counter drop",
            "ip saddr != 10.50.0.10 counter drop",
            "ether type != { ip, arp } counter drop",
        ] {
            assert!(script.contains(line), "missing {line:?} in\n{script}");
        }
        let input = script.split("chain input {").nth(1).unwrap();
        assert!(input.split('}').next().unwrap().contains("jump from_vt0"));
        // No ingress chains and no inet chains without default deny or NAT.
        assert!(!script.contains("to_vt0"));
        assert!(!script.contains("ct state"));
    }

    #[test]
    fn port_without_address_allows_only_dhcp() {
        let mut b = bridge();
        b.ports = vec![port("vt0", None)];
        let script = render(&plan(b)).unwrap();
        assert!(script.contains("udp sport 68 udp dport 67 return"));
        assert!(script.contains("ether type ip counter drop"));
        assert!(script.contains("arp saddr ip != 0.0.0.0 counter drop"));
    }

    #[test]
    fn port_without_port_security_gets_no_from_chain() {
        let mut b = bridge();
        b.ports[0].port_security = false;
        assert!(!render(&plan(b)).unwrap().contains("from_vt0"));
    }

    #[test]
    fn default_deny_renders_rules_and_the_conntrack_mark() {
        let mut b = bridge();
        b.ingress_default_deny = true;
        b.ingress = vec![
            IngressRule {
                proto: Protocol::Tcp,
                ports: Some((22, 22)),
                source: Some("192.168.1.7/24".parse().unwrap()),
            },
            IngressRule {
                proto: Protocol::Any,
                ports: Some((8000, 8100)),
                source: None,
            },
            IngressRule {
                proto: Protocol::Icmp,
                ports: None,
                source: None,
            },
        ];
        let script = render(&plan(b)).unwrap();
        for line in [
            "oifname \"vt0\" jump to_vt0",
            "meta mark & 0x00400000 == 0x00400000 return",
            "ether type ip ip saddr 192.168.1.0/24 ip protocol tcp tcp dport 22 return",
            "ether type ip ip protocol { tcp, udp } th dport 8000-8100 return",
            "ether type ip ip protocol icmp return",
            "meta mark set meta mark & 0xffbfffff",
            "ct state established,related meta mark set meta mark | 0x00400000",
        ] {
            assert!(script.contains(line), "missing {line:?} in\n{script}");
        }
        let output = script.split("chain output {").nth(1).unwrap();
        assert!(output.split('}').next().unwrap().contains("jump to_vt0"));
    }

    #[test]
    fn nat_masquerades_the_subnet_out_of_the_uplink() {
        let mut b = bridge();
        b.nat_uplink = Some("eth0".to_string());
        let script = render(&plan(b)).unwrap();
        for line in [
            "oifname \"eth0\" ip saddr 10.50.0.0/24 ip daddr != 10.50.0.0/24 masquerade",
            "iifname \"vbr0\" oifname \"eth0\" ip saddr 10.50.0.0/24 accept",
            "iifname \"eth0\" oifname \"vbr0\" ct state established,related accept",
            "iifname \"eth0\" oifname \"vbr0\" counter drop",
        ] {
            assert!(script.contains(line), "missing {line:?} in\n{script}");
        }
    }

    #[test]
    fn invalid_plans_are_rejected() {
        let mut no_subnet = bridge();
        no_subnet.subnet = None;
        no_subnet.nat_uplink = Some("eth0".to_string());
        let mut icmp_ports = bridge();
        icmp_ports.ingress = vec![IngressRule {
            proto: Protocol::Icmp,
            ports: Some((1, 2)),
            source: None,
        }];
        let mut reversed = bridge();
        reversed.ingress = vec![IngressRule {
            proto: Protocol::Tcp,
            ports: Some((90, 80)),
            source: None,
        }];
        let mut injected = bridge();
        injected.ports[0].ifname = "vt0\" accept".to_string();
        for b in [no_subnet, icmp_ports, reversed, injected] {
            assert!(render(&plan(b.clone())).is_err(), "{b:?} was accepted");
        }
    }

    #[test]
    fn mac_is_lowercase_colon_hex() {
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xAB, 0x0c, 0xff]),
            "52:54:00:ab:0c:ff"
        );
    }
}
