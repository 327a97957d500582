//! `vessel network ...`: the commands and their arguments; tables in `render.rs`.

mod render;

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use vessel_api::{
    CreateNetworkRequest, IngressPolicy, IngressRule, Network, NetworkKind, RuleProtocol,
    UpdateNetworkRequest,
};

use self::render::{network_details, network_table, rule_table, rule_text};
use crate::{CliError, Context};

/// `vessel network <verb>`
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// List networks with their kind, bridge, subnet and NICs.
    #[command(visible_alias = "ls")]
    List,
    /// Show one network.
    Show(NetworkNameArgs),
    /// Create a network.
    ///
    /// Kinds:
    ///   user     QEMU user-mode NAT: no privileges, VMs reach out but not each other.
    ///   bridge   Join an existing Linux bridge of the host (--bridge): VMs sit on its LAN.
    ///   managed  A bridge Vessel makes (vb-NAME) with a subnet; addresses come from Vessel's
    ///            IPAM through its DHCP server; --uplink NATs the subnet to the outside.
    ///   vxlan    A bridge joined to the same segment on other servers by a VXLAN tunnel
    ///            (--vni, --peer for each other server).
    ///
    /// Every NIC may send only from its own MAC and address (anti-spoofing). With
    /// --ingress-policy deny only replies and traffic matching an --allow rule reach the VMs.
    #[command(after_help = "Examples:
  vessel network create lan --kind managed --subnet 10.50.0.0/24 --uplink eth0
  vessel network create dmz --kind managed --subnet 10.60.0.0/24 --ingress-policy deny --allow tcp:22 --allow tcp:443
  vessel network create office --kind bridge --bridge br0
  vessel network create overlay --kind vxlan --vni 100 --peer 192.168.1.12 --subnet 10.70.0.0/24")]
    Create(Box<NetworkCreateArgs>),
    /// Change a network's ingress policy, DNS servers or VXLAN peers.
    Set(NetworkSetArgs),
    /// Manage a network's ingress rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Delete a network no NIC uses; its bridge, tunnel, DHCP server and rules go with it.
    #[command(visible_alias = "rm")]
    Delete(NetworkNameArgs),
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Allow traffic into the network's VMs (used with --ingress-policy deny).
    #[command(
        after_help = "Examples:\n  vessel network rule add lan tcp:80\n  vessel network rule add lan tcp:22@10.0.0.0/8\n  vessel network rule add lan icmp"
    )]
    Add(RuleArgs),
    /// Remove an ingress rule.
    #[command(visible_alias = "rm")]
    Remove(RuleArgs),
    /// List a network's ingress rules.
    #[command(visible_alias = "ls")]
    List(NetworkNameArgs),
}

#[derive(Debug, Clone, Args)]
pub struct NetworkNameArgs {
    /// Name of the network.
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    /// Name of the network.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// PROTO[:PORTS][@SOURCE]: tcp, udp, icmp or any; a port or range; a source network.
    #[arg(value_name = "RULE", value_parser = parse_rule)]
    pub rule: IngressRule,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    User,
    Bridge,
    Managed,
    Vxlan,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    Allow,
    Deny,
}

impl From<PolicyArg> for IngressPolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Allow => IngressPolicy::Allow,
            PolicyArg::Deny => IngressPolicy::Deny,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct NetworkCreateArgs {
    /// Name of the new network (at most 12 characters: it names the host's interfaces).
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(long, value_enum)]
    pub kind: KindArg,
    /// The project the network belongs to [default: default].
    #[arg(long)]
    pub project: Option<String>,
    /// bridge: the host bridge to join.
    #[arg(long, value_name = "BRIDGE")]
    pub bridge: Option<String>,
    /// IPv4 subnet, e.g. 10.50.0.0/24 (managed: required).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// The host's address on the bridge (default: the subnet's first address on managed).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// Hand out addresses only from FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST")]
    pub range: Option<String>,
    /// Do not run the DHCP server (managed); addresses are still reserved per NIC.
    #[arg(long, conflicts_with = "dhcp")]
    pub no_dhcp: bool,
    /// Run the DHCP server (vxlan with --gateway).
    #[arg(long)]
    pub dhcp: bool,
    /// DNS server handed out by DHCP (repeat for more).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// managed: NAT the subnet to the outside through this interface.
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// vxlan: the network identifier, 1 to 16777215.
    #[arg(long)]
    pub vni: Option<u32>,
    /// vxlan: another server's tunnel endpoint (repeat for each).
    #[arg(long = "peer", value_name = "IP")]
    pub peers: Vec<String>,
    /// vxlan: this server's tunnel endpoint address.
    #[arg(long, value_name = "IP")]
    pub local: Option<String>,
    /// vxlan: the interface tunnel packets leave through.
    #[arg(long, value_name = "IFACE")]
    pub underlay: Option<String>,
    #[arg(long)]
    pub mtu: Option<u32>,
    #[arg(long, value_enum)]
    pub ingress_policy: Option<PolicyArg>,
    /// An ingress rule, PROTO[:PORTS][@SOURCE] (repeat for more).
    #[arg(long = "allow", value_name = "RULE", value_parser = parse_rule)]
    pub allow: Vec<IngressRule>,
}

#[derive(Debug, Clone, Args)]
pub struct NetworkSetArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(long, value_enum)]
    pub ingress_policy: Option<PolicyArg>,
    /// Replace the DNS servers (repeat for more).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// Replace the VXLAN peers (repeat for more).
    #[arg(long = "peer", value_name = "IP")]
    pub peers: Vec<String>,
}

/// `tcp:80`, `tcp:8000-8099@10.0.0.0/8`, `icmp`, `any@192.168.1.0/24`.
pub fn parse_rule(s: &str) -> Result<IngressRule, String> {
    let (rest, source) = match s.split_once('@') {
        Some((rest, source)) => (rest, Some(source.to_string())),
        None => (s, None),
    };
    let (proto, ports) = match rest.split_once(':') {
        Some((proto, ports)) => (proto, Some(ports.to_string())),
        None => (rest, None),
    };
    let protocol = match proto {
        "tcp" => RuleProtocol::Tcp,
        "udp" => RuleProtocol::Udp,
        "icmp" => RuleProtocol::Icmp,
        "any" => RuleProtocol::Any,
        other => {
            return Err(format!(
                "protocol {other:?} is not tcp, udp, icmp or any (rule: PROTO[:PORTS][@SOURCE])"
            ))
        }
    };
    Ok(IngressRule {
        protocol,
        ports,
        source,
    })
}

fn kind(k: KindArg) -> NetworkKind {
    match k {
        KindArg::User => NetworkKind::User,
        KindArg::Bridge => NetworkKind::Bridge,
        KindArg::Managed => NetworkKind::Managed,
        KindArg::Vxlan => NetworkKind::Vxlan,
    }
}

fn create_request(args: NetworkCreateArgs) -> CreateNetworkRequest {
    CreateNetworkRequest {
        name: args.name,
        kind: kind(args.kind),
        project: args.project,
        bridge: args.bridge,
        subnet: args.subnet,
        gateway: args.gateway,
        range: args.range,
        dhcp: if args.no_dhcp {
            Some(false)
        } else if args.dhcp {
            Some(true)
        } else {
            None
        },
        dns: args.dns,
        uplink: args.uplink,
        vni: args.vni,
        peers: args.peers,
        local: args.local,
        underlay: args.underlay,
        mtu: args.mtu,
        ingress_policy: args.ingress_policy.map(Into::into).unwrap_or_default(),
        ingress: args.allow,
    }
}

async fn set_rules(
    ctx: &Context,
    name: &str,
    change: impl FnOnce(&mut Vec<IngressRule>) -> Result<(), CliError>,
) -> Result<Network, CliError> {
    let mut rules = ctx.client.get_network(name).await?.ingress;
    change(&mut rules)?;
    let update = UpdateNetworkRequest {
        ingress: Some(rules),
        ..Default::default()
    };
    Ok(ctx.client.update_network(name, &update).await?)
}

/// `vessel network rule remove`: a rule the network does not have is "not found".
async fn remove_rule(ctx: &Context, args: RuleArgs) -> Result<(), CliError> {
    let rule = args.rule.clone();
    let name = args.name.clone();
    let network = set_rules(ctx, &args.name, |rules| {
        let before = rules.len();
        rules.retain(|r| *r != rule);
        if rules.len() == before {
            let error = vessel_api::ApiError::not_found(format!(
                "network {name} has no rule {}",
                rule_text(&rule)
            ))
            .with_hint(format!("see `vessel network rule list {name}`"));
            return Err(crate::ClientError::Api { status: 404, error }.into());
        }
        Ok(())
    })
    .await?;
    ctx.show(&network, |n| {
        format!(
            "rule {} removed from network {}\n",
            rule_text(&args.rule),
            n.name
        )
    })?;
    Ok(())
}

pub(crate) async fn run(command: NetworkCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        NetworkCommand::List => {
            let networks = ctx.client.list_networks().await?;
            ctx.show(&networks, |n| network_table(n))?;
        }
        NetworkCommand::Show(args) => {
            let network = ctx.client.get_network(&args.name).await?;
            ctx.show(&network, network_details)?;
        }
        NetworkCommand::Create(args) => {
            let network = ctx.client.create_network(&create_request(*args)).await?;
            ctx.show(&network, |n| {
                format!(
                    "network {} ({}) created{}\n",
                    n.name,
                    n.kind.as_str(),
                    n.bridge
                        .as_deref()
                        .map(|b| format!(" on bridge {b}"))
                        .unwrap_or_default()
                )
            })?;
        }
        NetworkCommand::Set(args) => {
            let update = UpdateNetworkRequest {
                ingress_policy: args.ingress_policy.map(Into::into),
                ingress: None,
                peers: (!args.peers.is_empty()).then_some(args.peers),
                dns: (!args.dns.is_empty()).then_some(args.dns),
            };
            let network = ctx.client.update_network(&args.name, &update).await?;
            ctx.show(&network, |n| format!("network {} updated\n", n.name))?;
        }
        NetworkCommand::Rule(RuleCommand::Add(args)) => {
            let rule = args.rule.clone();
            let network = set_rules(ctx, &args.name, |rules| {
                rules.push(rule);
                Ok(())
            })
            .await?;
            ctx.show(&network, |n| {
                format!(
                    "rule {} added to network {}\n",
                    rule_text(&args.rule),
                    n.name
                )
            })?;
        }
        NetworkCommand::Rule(RuleCommand::Remove(args)) => remove_rule(ctx, args).await?,
        NetworkCommand::Rule(RuleCommand::List(args)) => {
            let network = ctx.client.get_network(&args.name).await?;
            ctx.show(&network.ingress, |rules| {
                rule_table(network.ingress_policy, rules)
            })?;
        }
        NetworkCommand::Delete(args) => {
            ctx.client.delete_network(&args.name).await?;
            ctx.print(&format!("network {} deleted\n", args.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_from_the_short_form() {
        let r = parse_rule("tcp:8000-8099@10.0.0.0/8").unwrap();
        assert_eq!(r.protocol, RuleProtocol::Tcp);
        assert_eq!(r.ports.as_deref(), Some("8000-8099"));
        assert_eq!(r.source.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(rule_text(&r), "tcp:8000-8099@10.0.0.0/8");
        assert_eq!(parse_rule("icmp").unwrap().ports, None);
        assert!(parse_rule("sctp:80").unwrap_err().contains("not tcp"));
    }
}
