//! `vessel host ...`

use std::process::ExitCode;

use clap::Subcommand;

use crate::output::{finish, format_mib, key_values, plain_table};
use crate::{CliError, ClientError, Context};
use vessel_api::{CheckVerdict, HostCheck, HostInfo};

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
            ctx.show(&stats, super::stats::host_text)?;
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
            ctx.show(&info, host_details)?;
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
            ctx.show(&check, host_check_report)?;
            if host_check_failed(&check) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel host info`.
pub fn host_details(host: &HostInfo) -> String {
    key_values(vec![
        ("Name", host.name.clone()),
        ("Hostname", host.hostname.clone()),
        ("Vessel version", host.version.clone()),
        ("CPUs", host.cpus.to_string()),
        ("Memory", format_mib(host.memory_mib)),
        ("Accelerator", host.accelerator.clone()),
        ("Accelerator reason", host.accelerator_reason.clone()),
        ("QEMU version", host.qemu_version.clone()),
        ("VMs defined", host.vms_defined.to_string()),
        ("VMs running", host.vms_running.to_string()),
    ])
}

/// `vessel host check`: one line per check, then the accelerator verdict.
pub fn host_check_report(check: &HostCheck) -> String {
    let mut table = plain_table(None);
    for item in &check.items {
        table.add_row(vec![
            verdict_name(item.verdict).to_string(),
            item.name.clone(),
            item.detail.clone(),
        ]);
    }
    let mut text = if check.items.is_empty() {
        String::new()
    } else {
        finish(table)
    };
    text.push_str(&format!(
        "accelerator: {} ({})\n",
        check.accelerator, check.accelerator_reason
    ));
    text
}

/// Whether any host check failed.
pub fn host_check_failed(check: &HostCheck) -> bool {
    check
        .items
        .iter()
        .any(|item| item.verdict == CheckVerdict::Fail)
}

fn verdict_name(verdict: CheckVerdict) -> &'static str {
    match verdict {
        CheckVerdict::Pass => "PASS",
        CheckVerdict::Warn => "WARN",
        CheckVerdict::Fail => "FAIL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::HostCheckItem;

    #[test]
    fn host_check_lists_verdicts_then_the_accelerator() {
        let check = HostCheck {
            items: vec![
                HostCheckItem {
                    name: "kvm".into(),
                    verdict: CheckVerdict::Warn,
                    detail: "/dev/kvm exists but crashes guests".into(),
                },
                HostCheckItem {
                    name: "qemu".into(),
                    verdict: CheckVerdict::Pass,
                    detail: "QEMU 9.2.0".into(),
                },
            ],
            accelerator: "tcg".into(),
            accelerator_reason: "KVM failed a test boot".into(),
        };
        let text = host_check_report(&check);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("WARN   kvm"), "{text}");
        assert!(lines[1].starts_with("PASS   qemu"), "{text}");
        assert_eq!(lines[2], "accelerator: tcg (KVM failed a test boot)");
        assert!(!host_check_failed(&check));
    }
}
