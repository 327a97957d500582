//! `vessel vm nic ...`

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{AddNicRequest, VmNic};

use crate::args::WaitArgs;
use crate::output::{finish, or_dash, plain_table};
use crate::{CliError, Context};

/// `vessel vm nic <verb>`
#[derive(Debug, Subcommand)]
pub enum NicCommand {
    /// Add a NIC on a network; hot-plugged into a running q35 VM.
    ///
    /// The NIC gets a free MAC (52:54:00:xx:xx:xx) and, on a network with a subnet, the next
    /// free address, which Vessel's DHCP server hands to it; the NIC may only send from that
    /// MAC and address unless --no-port-security.
    #[command(
        after_help = "Examples:\n  vessel vm nic add web1 lan\n  vessel vm nic add web1 lan --ip 10.50.0.10 --bandwidth 100"
    )]
    Add(NicAddArgs),
    /// Remove a NIC (by id or MAC); hot-unplugged from a running VM.
    #[command(visible_alias = "rm")]
    Remove(NicRemoveArgs),
    /// List a VM's NICs.
    #[command(visible_alias = "ls")]
    List(NicVmArgs),
}

#[derive(Debug, Clone, Args)]
pub struct NicVmArgs {
    /// Name of the VM.
    #[arg(value_name = "VM")]
    pub vm: String,
}

#[derive(Debug, Clone, Args)]
pub struct NicAddArgs {
    /// Name of the VM.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The network to put the NIC on.
    #[arg(value_name = "NETWORK")]
    pub network: String,
    /// A MAC address (unicast, unused); default: a random free one.
    #[arg(long)]
    pub mac: Option<String>,
    /// A fixed address from the network's subnet; default: the next free one.
    #[arg(long = "ip", value_name = "IP")]
    pub ipv4: Option<String>,
    /// Limit the NIC to this many Mbit/s in each direction.
    #[arg(long, value_name = "MBIT")]
    pub bandwidth: Option<u32>,
    /// Let the NIC send from any MAC and address (for a VM that routes or bridges).
    #[arg(long)]
    pub no_port_security: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NicRemoveArgs {
    /// Name of the VM.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The NIC's id (nic0, nic1, ...) or MAC.
    #[arg(value_name = "NIC")]
    pub nic: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub fn nic_table(nics: &[VmNic]) -> String {
    let mut table = plain_table(Some(&[
        "ID",
        "NETWORK",
        "MAC",
        "ADDRESS",
        "TAP",
        "BANDWIDTH",
        "PORT SECURITY",
    ]));
    for nic in nics {
        table.add_row(vec![
            nic.id.clone(),
            nic.network.clone(),
            nic.mac.clone(),
            or_dash(nic.ipv4.as_deref()),
            nic.tap.clone(),
            nic.bandwidth_mbit
                .map(|m| format!("{m} Mbit/s"))
                .unwrap_or_else(|| "-".into()),
            if nic.port_security { "on" } else { "off" }.to_string(),
        ]);
    }
    finish(table)
}

pub(crate) async fn run(command: NicCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        NicCommand::Add(args) => {
            let request = AddNicRequest {
                network: args.network.clone(),
                mac: args.mac,
                ipv4: args.ipv4,
                bandwidth_mbit: args.bandwidth,
                no_port_security: args.no_port_security,
            };
            let outcome = ctx
                .client
                .add_nic(&args.vm, &request, !args.wait.no_wait)
                .await?;
            ctx.show_outcome(&outcome, |vm| {
                let nic = vm
                    .spec
                    .nics
                    .iter()
                    .rev()
                    .find(|n| n.network == args.network);
                match nic {
                    Some(nic) => format!(
                        "NIC {} ({}) added to VM {} on network {}{}\n",
                        nic.id,
                        nic.mac,
                        args.vm,
                        nic.network,
                        nic.ipv4
                            .as_deref()
                            .map(|ip| format!(", address {ip}"))
                            .unwrap_or_default()
                    ),
                    None => format!("NIC added to VM {}\n", args.vm),
                }
            })?;
        }
        NicCommand::Remove(args) => {
            let outcome = ctx
                .client
                .remove_nic(&args.vm, &args.nic, !args.wait.no_wait)
                .await?;
            ctx.show_outcome(&outcome, |_| {
                format!("NIC {} removed from VM {}\n", args.nic, args.vm)
            })?;
        }
        NicCommand::List(args) => {
            let nics = ctx.client.list_nics(&args.vm).await?;
            ctx.show(&nics, |n| nic_table(n))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
