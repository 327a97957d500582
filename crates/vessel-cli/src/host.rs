//! `vessel host ...`

use std::process::ExitCode;

use clap::Subcommand;

use crate::output;
use crate::{CliError, ClientError, Context};

/// `vessel host <verb>`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Show the host: its name, CPUs and memory, the accelerator VMs get, the QEMU version,
    /// and how many VMs are defined and running.
    Info,
    /// Check the host's virtualization capabilities.
    ///
    /// Prints one line per check with its verdict (PASS, WARN or FAIL) and what was found:
    /// KVM present and usable, the QEMU binary, its version and machine types, tun, bridge
    /// and cgroups. The last line names the accelerator `auto` picks on this host and why.
    ///
    /// Exits with status 1 when any check FAILs, so it can gate scripts. When no daemon is
    /// running (before installing one, say), the checks run right here instead.
    #[command(
        after_help = "Examples:\n  vessel host check\n  vessel host check -o json | jq '.items[] | select(.verdict != \"pass\")'"
    )]
    Check,
    /// Show the host's figures: CPU, memory, load, disks, network, and the vCPUs and memory
    /// committed to VMs against what the host has (the overcommit ratios).
    #[command(after_help = "Examples:\n  vessel host stats\n  vessel host stats -o json")]
    Stats,
    /// Replace the host's master key and re-wrap every volume key under the new one.
    ///
    /// Volume keys are stored only wrapped (encrypted) by the master key file in the daemon's
    /// data dir. Rotation makes a new master key, re-wraps every stored key with it, then
    /// replaces the file. Volume data is not re-encrypted: each volume keeps its own key. Safe
    /// to interrupt: the old key stays valid until every key is re-wrapped.
    #[command(after_help = "Examples:\n  vessel host rotate-master-key")]
    RotateMasterKey,
}

pub(crate) async fn run(command: HostCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        HostCommand::Stats => {
            let stats = ctx.client.host_stats().await?;
            ctx.show(&stats, crate::stats::host_text)?;
        }
        HostCommand::RotateMasterKey => {
            let done = ctx.client.rotate_master_key().await?;
            ctx.show(&done, |d| {
                format!(
                    "master key rotated; {} volume keys re-wrapped under key {}\n",
                    d.rewrapped, d.key_id
                )
            })?;
        }
        HostCommand::Info => {
            let info = ctx.client.host_info().await?;
            ctx.show(&info, output::host_details)?;
        }
        HostCommand::Check => {
            let check = match ctx.client.host_check().await {
                Err(ClientError::Unreachable { .. }) => {
                    eprintln!(
                        "note: no daemon reachable at {}; checking this host directly",
                        ctx.client.socket().display()
                    );
                    tokio::task::spawn_blocking(|| {
                        vessel_qemu::host::check_host("qemu-system-x86_64")
                    })
                    .await
                    .map_err(|e| CliError::io("the host check failed", std::io::Error::other(e)))?
                }
                other => other?,
            };
            ctx.show(&check, output::host_check_report)?;
            if output::host_check_failed(&check) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
