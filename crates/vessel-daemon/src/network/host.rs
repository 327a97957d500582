//! The host side of networks: bridges, VXLAN links, taps, the nftables ruleset and the DHCP
//! servers, made to match the store's networks and NICs (through vessel-net and vessel-dhcp).
//!
//! Invariants:
//! - Vessel only creates, changes and deletes interfaces it names itself (`vb-`, `vx-`, `vt`
//!   prefixes, and vessel-net's IFBs) and only its own nftables tables; a host bridge of a
//!   `bridge` network gets taps enslaved and nothing else.
//! - The firewall is always rendered whole from the store ([`NetHost::sync`]): after a crash,
//!   a restart rebuilds exactly what the records say, and a deleted network leaves no rule.
//! - Taps are not persistent: QEMU holds the only fd, so a tap goes when its VM's QEMU goes.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::{watch, MutexGuard};
use vessel_api::{IngressPolicy, Network, NetworkKind, RuleProtocol, VmNic, VmSpec};
use vessel_core::network::{self as rules, Ipv4Cidr};
use vessel_dhcp::{Binding, Bindings, DhcpServer, ServerConfig};
use vessel_net::{firewall, BridgePlan, FirewallPlan, Netlink, PortPlan, VxlanConfig};
use vessel_qemu::nic::{NicBackend, NicPlan};

use crate::ctx::Ctx;
use crate::network::host_state::DhcpRuntime;
pub use crate::network::host_state::NetHost;
use crate::vm::model::Loaded;

/// How long a DHCP lease lasts; the address never changes while the NIC exists, so renewals
/// are a formality.
const LEASE_SECS: u32 = 3600;

fn subnet_of(network: &Network) -> Option<Ipv4Cidr> {
    network.subnet.as_deref()?.parse().ok()
}

fn gateway_of(network: &Network) -> Option<Ipv4Addr> {
    network.gateway.as_deref()?.parse().ok()
}

impl NetHost {
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().await
    }

    /// Checks what the network needs from the host before anything is made: its bridge, uplink
    /// and underlay exist, its interface names are free, its subnet is not routed already.
    pub async fn check_host(&self, network: &Network) -> Result<(), String> {
        if !network.kind.uses_tap() {
            return Ok(());
        }
        let nl = self.netlink()?;
        let exists = |name: String| {
            let nl = nl.clone();
            async move { nl.exists(&name).await.map_err(|e| e.to_string()) }
        };
        if network.kind == NetworkKind::Bridge {
            let bridge = network.bridge.clone().unwrap_or_default();
            if !std::path::Path::new(&format!("/sys/class/net/{bridge}/bridge")).exists() {
                return Err(format!(
                    "the host has no bridge {bridge:?}; create it first (ip link add {bridge} type bridge) or name an existing one"
                ));
            }
            return Ok(());
        }
        for name in [
            rules::bridge_name(&network.name),
            rules::vxlan_name(&network.name),
        ] {
            if exists(name.clone()).await? {
                return Err(format!(
                    "the host already has an interface {name:?} that Vessel did not make for this network; Vessel never takes over interfaces it did not create"
                ));
            }
        }
        for (what, name) in [("uplink", &network.uplink), ("underlay", &network.underlay)] {
            if let Some(name) = name {
                if !exists(name.clone()).await? {
                    return Err(format!(
                        "the {what} {name:?} does not exist on this host (see `ip link`)"
                    ));
                }
            }
        }
        if let (Some(subnet), Some(_)) = (subnet_of(network), gateway_of(network)) {
            let cidr: vessel_net::Ipv4Cidr =
                subnet.to_string().parse().map_err(|e| format!("{e}"))?;
            if let Some(route) = nl
                .subnet_overlaps_route(cidr)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "subnet {subnet} collides with the host's route to {route}; choose a subnet the host does not use"
                ));
            }
        }
        Ok(())
    }

    /// Makes the host match the network: its bridge (with the gateway address), its VXLAN link
    /// and peers, forwarding for NAT, its DHCP server. Safe to run again at any time.
    pub async fn ensure(&self, network: &Network) -> Result<(), String> {
        if !matches!(network.kind, NetworkKind::Managed | NetworkKind::Vxlan) {
            return Ok(());
        }
        let nl = self.netlink()?;
        let bridge = rules::bridge_name(&network.name);
        ensure_bridge(&nl, &bridge, network).await?;
        if network.kind == NetworkKind::Vxlan {
            ensure_vxlan(&nl, &bridge, network).await?;
        }
        if network.uplink.is_some() {
            vessel_net::sysctl::enable_ip_forward().map_err(|e| e.to_string())?;
        }
        self.ensure_dhcp(network, &bridge)
    }

    fn ensure_dhcp(&self, network: &Network, bridge: &str) -> Result<(), String> {
        let mut servers = self.dhcp.lock();
        let wanted = dhcp_config(network, bridge);
        let current = servers.get(&network.name).map(|r| r.config.clone());
        if current == wanted {
            return Ok(());
        }
        let old_bindings = servers
            .remove(&network.name)
            .map(|r| r.bindings.borrow().clone())
            .unwrap_or_default();
        let Some(config) = wanted else {
            return Ok(());
        };
        let (tx, rx) = watch::channel(old_bindings);
        let handle = DhcpServer::spawn(config.clone(), rx).map_err(|e| e.to_string())?;
        servers.insert(
            network.name.clone(),
            DhcpRuntime {
                config,
                bindings: tx,
                _handle: handle,
            },
        );
        Ok(())
    }

    /// Takes the network off the host: DHCP server, VXLAN link, bridge (only those Vessel made).
    /// Failures are logged: the record is gone, and a restart removes what is left as orphans.
    pub async fn remove(&self, network: &Network) {
        self.dhcp.lock().remove(&network.name);
        if !matches!(network.kind, NetworkKind::Managed | NetworkKind::Vxlan) {
            return;
        }
        let Ok(nl) = self.netlink() else { return };
        for name in [
            rules::vxlan_name(&network.name),
            rules::bridge_name(&network.name),
        ] {
            if matches!(nl.exists(&name).await, Ok(true)) {
                if let Err(e) = nl.delete_link(&name).await {
                    tracing::warn!(interface = %name, error = %e, "could not delete interface");
                }
            }
        }
    }

    /// Renders the firewall from every network and NIC in the store and applies it, and gives
    /// each DHCP server its current bindings. Errors are logged and raised as alerts: the
    /// previous ruleset stays in force.
    pub async fn sync(&self, ctx: &Ctx) {
        let mut applied = self.applied.lock().await;
        let (networks, vms) = match load_all(ctx).await {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read networks to sync the firewall");
                return;
            }
        };
        self.update_bindings(&networks, &vms);
        if networks.iter().any(|n| n.kind.uses_tap()) {
            // Bandwidth limits leave an IFB device behind when their tap goes with its QEMU.
            if let Ok(nl) = self.netlink() {
                if let Err(e) = vessel_net::tc::remove_orphan_ifbs(&nl).await {
                    tracing::warn!(error = %e, "could not remove orphan IFB devices");
                }
            }
        }
        let plan = firewall_plan(&networks, &vms);
        if applied.as_ref() == Some(&plan) {
            return;
        }
        let result = if plan.bridges.is_empty() {
            // Nothing to filter: remove our tables if a previous run left them, and otherwise
            // leave the host's firewall alone (not even an empty transaction).
            if has_vessel_tables().await {
                firewall::remove_all().await
            } else {
                Ok(())
            }
        } else {
            firewall::apply(&plan).await
        };
        match result {
            Ok(()) => *applied = Some(plan),
            Err(e) => {
                ctx.alert("", format!("could not apply the network firewall: {e}"))
                    .await
            }
        }
    }

    fn update_bindings(&self, networks: &[Network], vms: &[Loaded]) {
        let servers = self.dhcp.lock();
        for network in networks {
            if let Some(runtime) = servers.get(&network.name) {
                let bindings = bindings_of(&network.name, vms);
                runtime.bindings.send_if_modified(|current| {
                    let changed = *current != bindings;
                    *current = bindings;
                    changed
                });
            }
        }
    }

    /// At daemon start: set up every network again, delete interfaces of networks that no
    /// longer exist (a crash between the record and the cleanup), and rebuild the firewall.
    pub async fn startup(&self, ctx: &Ctx) {
        let networks = match crate::network::service::list_records(ctx).await {
            Ok(networks) => networks,
            Err(e) => {
                tracing::error!(error = %e.message, "cannot read networks");
                return;
            }
        };
        for network in &networks {
            if let Err(e) = self.ensure(network).await {
                ctx.alert(
                    "",
                    format!("network {} could not be set up: {e}", network.name),
                )
                .await;
            }
        }
        // Only root can have made (and can remove) interfaces.
        if let (0, Ok(nl)) = (euid(), self.netlink()) {
            remove_orphans(&nl, &networks).await;
        }
        self.sync(ctx).await;
    }
}

/// Whether nftables holds one of Vessel's tables (false without nft: then none can exist).
async fn has_vessel_tables() -> bool {
    let Ok(out) = tokio::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .await
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_end().ends_with(&format!(" {}", firewall::TABLE)))
}

/// The daemon's effective uid: only root makes bridges, taps and nftables rules.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

async fn ensure_bridge(nl: &Netlink, bridge: &str, network: &Network) -> Result<(), String> {
    if !nl.exists(bridge).await.map_err(|e| e.to_string())? {
        nl.create_bridge(bridge, Some(network.mtu))
            .await
            .map_err(|e| e.to_string())?;
    }
    if let (Some(subnet), Some(gateway)) = (subnet_of(network), gateway_of(network)) {
        let address: vessel_net::Ipv4Cidr = format!("{gateway}/{}", subnet.prefix)
            .parse()
            .map_err(|e| format!("{e}"))?;
        let present = nl.addresses(bridge).await.map_err(|e| e.to_string())?;
        if !present.iter().any(|a| a.addr() == gateway) {
            nl.add_address(bridge, address)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    nl.set_up(bridge, true).await.map_err(|e| e.to_string())
}

async fn ensure_vxlan(nl: &Netlink, bridge: &str, network: &Network) -> Result<(), String> {
    let name = rules::vxlan_name(&network.name);
    if !nl.exists(&name).await.map_err(|e| e.to_string())? {
        let mut config = VxlanConfig::new(&name, network.vni.unwrap_or_default());
        config.local = network.local.as_deref().and_then(|l| l.parse().ok());
        config.underlay = network.underlay.clone();
        config.mtu = Some(network.mtu);
        nl.create_vxlan(&config).await.map_err(|e| e.to_string())?;
    }
    nl.set_master(&name, Some(bridge))
        .await
        .map_err(|e| e.to_string())?;
    let wanted: Vec<Ipv4Addr> = network
        .peers
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    let present = nl.vxlan_peers(&name).await.map_err(|e| e.to_string())?;
    for peer in wanted.iter().filter(|p| !present.contains(p)) {
        nl.add_vxlan_peer(&name, *peer)
            .await
            .map_err(|e| e.to_string())?;
    }
    for peer in present.iter().filter(|p| !wanted.contains(p)) {
        nl.remove_vxlan_peer(&name, *peer)
            .await
            .map_err(|e| e.to_string())?;
    }
    nl.set_up(&name, true).await.map_err(|e| e.to_string())
}

fn dhcp_config(network: &Network, bridge: &str) -> Option<ServerConfig> {
    if !network.dhcp {
        return None;
    }
    let subnet = subnet_of(network)?;
    let gateway = gateway_of(network)?;
    Some(ServerConfig {
        ifname: bridge.to_string(),
        server_ip: gateway,
        prefix_len: subnet.prefix,
        router: Some(gateway),
        dns: network.dns.iter().filter_map(|d| d.parse().ok()).collect(),
        domain: None,
        lease_secs: LEASE_SECS,
        mtu: (network.mtu != 1500).then_some(network.mtu as u16),
    })
}

fn bindings_of(network: &str, vms: &[Loaded]) -> Bindings {
    let mut bindings = Bindings::new();
    for vm in vms {
        for nic in vm.record.spec.nics.iter().filter(|n| n.network == network) {
            let (Ok(mac), Some(ip)) = (
                rules::parse_mac(&nic.mac),
                nic.ipv4.as_deref().and_then(|ip| ip.parse().ok()),
            ) else {
                continue;
            };
            bindings.insert(
                mac,
                Binding {
                    ip,
                    hostname: Some(vm.record.spec.name.clone()),
                },
            );
        }
    }
    bindings
}

async fn load_all(ctx: &Ctx) -> anyhow::Result<(Vec<Network>, Vec<Loaded>)> {
    let networks = crate::network::service::list_records(ctx)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let vms = ctx.view.all().await?;
    Ok((networks, vms))
}

/// The whole firewall: one bridge plan per tap network, with the ports of every NIC on it.
pub fn firewall_plan(networks: &[Network], vms: &[Loaded]) -> FirewallPlan {
    let bridges = networks
        .iter()
        .filter(|n| n.kind.uses_tap())
        .filter_map(|network| {
            let bridge = network.bridge.clone()?;
            Some(BridgePlan {
                bridge,
                subnet: network.subnet.as_deref().and_then(|s| s.parse().ok()),
                nat_uplink: network.uplink.clone(),
                ingress_default_deny: network.ingress_policy == IngressPolicy::Deny,
                ingress: network.ingress.iter().filter_map(ingress_rule).collect(),
                ports: ports_of(&network.name, vms),
            })
        })
        .collect();
    FirewallPlan { bridges }
}

fn ports_of(network: &str, vms: &[Loaded]) -> Vec<PortPlan> {
    vms.iter()
        .flat_map(|vm| vm.record.spec.nics.iter())
        .filter(|nic| nic.network == network)
        .filter_map(|nic| {
            Some(PortPlan {
                ifname: nic.tap.clone(),
                mac: rules::parse_mac(&nic.mac).ok()?,
                ipv4: nic.ipv4.as_deref().and_then(|ip| ip.parse().ok()),
                port_security: nic.port_security,
            })
        })
        .collect()
}

fn ingress_rule(rule: &vessel_api::IngressRule) -> Option<vessel_net::IngressRule> {
    Some(vessel_net::IngressRule {
        proto: match rule.protocol {
            RuleProtocol::Tcp => vessel_net::Protocol::Tcp,
            RuleProtocol::Udp => vessel_net::Protocol::Udp,
            RuleProtocol::Icmp => vessel_net::Protocol::Icmp,
            RuleProtocol::Any => vessel_net::Protocol::Any,
        },
        ports: match &rule.ports {
            Some(ports) => Some(rules::parse_ports(ports).ok()?),
            None => None,
        },
        source: match &rule.source {
            Some(source) => Some(source.parse().ok()?),
            None => None,
        },
    })
}

/// Deletes `vb-`/`vx-` interfaces no network owns, and IFBs whose tap is gone.
async fn remove_orphans(nl: &Netlink, networks: &[Network]) {
    for (prefix, name_of) in [
        ("vb-", rules::bridge_name as fn(&str) -> String),
        ("vx-", rules::vxlan_name as fn(&str) -> String),
    ] {
        let Ok(links) = nl.links_with_prefix(prefix).await else {
            continue;
        };
        for link in links {
            let owned = networks
                .iter()
                .any(|n| n.kind.uses_tap() && name_of(&n.name) == link.name);
            if !owned {
                tracing::info!(interface = %link.name, "removing an interface of a deleted network");
                if let Err(e) = nl.delete_link(&link.name).await {
                    tracing::warn!(interface = %link.name, error = %e, "could not delete");
                }
            }
        }
    }
    if let Err(e) = vessel_net::tc::remove_orphan_ifbs(nl).await {
        tracing::warn!(error = %e, "could not remove orphan IFB devices");
    }
}

/// The NICs of a VM about to start, with their taps open and on their bridges.
pub async fn plan_nics(ctx: &Ctx, spec: &VmSpec) -> Result<Vec<NicPlan>, String> {
    let mut plans = Vec::with_capacity(spec.nics.len());
    for nic in &spec.nics {
        plans.push(plan_nic(ctx, &spec.name, nic).await?);
    }
    Ok(plans)
}

/// One NIC's backend: user-mode NAT, or a fresh tap on the network's bridge.
pub async fn plan_nic(ctx: &Ctx, vm: &str, nic: &VmNic) -> Result<NicPlan, String> {
    let network = crate::network::service::record(ctx, &nic.network)
        .await
        .map_err(|e| format!("NIC {} of {vm}: {}", nic.id, e.message))?;
    let backend = if network.kind.uses_tap() {
        let fd = open_tap(&ctx.net.netlink()?, nic, &network)
            .await
            .map_err(|e| format!("NIC {} of {vm}: tap {}: {e}", nic.id, nic.tap))?;
        NicBackend::Tap(Arc::new(fd))
    } else {
        NicBackend::User
    };
    Ok(NicPlan {
        id: nic.id.clone(),
        mac: nic.mac.clone(),
        backend,
    })
}

async fn open_tap(nl: &Netlink, nic: &VmNic, network: &Network) -> Result<OwnedFd, String> {
    let bridge = network
        .bridge
        .as_deref()
        .ok_or("the network has no bridge")?;
    let fd = vessel_net::create_tap(&nic.tap).map_err(|e| e.to_string())?;
    nl.set_mtu(&nic.tap, network.mtu)
        .await
        .map_err(|e| e.to_string())?;
    nl.set_master(&nic.tap, Some(bridge))
        .await
        .map_err(|e| e.to_string())?;
    nl.set_up(&nic.tap, true).await.map_err(|e| e.to_string())?;
    if let Some(mbit) = nic.bandwidth_mbit {
        vessel_net::set_bandwidth(&nic.tap, Some(mbit))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(fd)
}

/// After a daemon restart: the taps of a re-adopted VM are still there (QEMU holds them); put
/// them back on their bridges in case the bridge was made again in between.
pub async fn readopt_taps(ctx: &Ctx, spec: &VmSpec) {
    let Ok(nl) = ctx.net.netlink() else { return };
    for nic in &spec.nics {
        let Ok(network) = crate::network::service::record(ctx, &nic.network).await else {
            continue;
        };
        let (Some(bridge), Ok(true)) = (network.bridge.as_deref(), nl.exists(&nic.tap).await)
        else {
            continue;
        };
        if let Err(e) = nl.set_master(&nic.tap, Some(bridge)).await {
            tracing::warn!(tap = %nic.tap, error = %e, "could not put a re-adopted tap back on its bridge");
        }
        let _ = nl.set_up(&nic.tap, true).await;
    }
}
