//! `vessel vm snapshot ...`

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::CreateSnapshotRequest;

use crate::args::WaitArgs;
use crate::output::{finish, format_age, format_bytes, now_ms, or_dash, plain_table};
use crate::{CliError, Context};

/// `vessel vm snapshot <verb>`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of a VM's disks, stopped or running.
    ///
    /// A running VM's disks are snapshotted together in one atomic step (the guest is held for
    /// milliseconds); with --memory its running state is saved too, so that a revert resumes it
    /// where it was (the guest is paused while its memory is written). Every writable disk of
    /// the VM must be qcow2.
    #[command(
        after_help = "Examples:\n  vessel vm snapshot create web1 before-upgrade\n  vessel vm snapshot create web1 live1 --memory"
    )]
    Create(SnapshotCreateArgs),
    /// List a VM's snapshots, oldest first, with the chain (each one's parent) and the
    /// current one marked `*`.
    #[command(visible_alias = "ls")]
    List(SnapshotVmArgs),
    /// Revert a VM to a snapshot, discarding everything since.
    ///
    /// The VM's disks and settings go back to the snapshot's. A snapshot with memory resumes
    /// the VM running where it was; a disk-only one leaves it stopped (a running VM is stopped
    /// first, without waiting for the guest: its current state is being thrown away).
    #[command(after_help = "Examples:\n  vessel vm snapshot revert web1 before-upgrade")]
    Revert(SnapshotArgs),
    /// Delete a snapshot; the VM's current state is kept.
    #[command(visible_alias = "rm")]
    Delete(SnapshotArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotVmArgs {
    /// Name of the VM.
    #[arg(value_name = "VM")]
    pub vm: String,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// Name of the VM.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Name of the snapshot.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotCreateArgs {
    #[command(flatten)]
    pub target: SnapshotArgs,
    /// Save the running state (memory, devices) too; the VM must be running.
    #[arg(long)]
    pub memory: bool,
}

pub(crate) async fn run(command: SnapshotCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    let client = &ctx.client;
    match command {
        SnapshotCommand::Create(args) => {
            let t = &args.target;
            let request = CreateSnapshotRequest {
                name: t.snapshot.clone(),
                memory: args.memory,
            };
            let outcome = client
                .create_snapshot(&t.vm, &request, !t.wait.no_wait)
                .await?;
            ctx.show_outcome(&outcome, |_| {
                format!("snapshot {} of VM {} taken\n", t.snapshot, t.vm)
            })?;
        }
        SnapshotCommand::List(args) => {
            let snapshots = client.list_snapshots(&args.vm).await?;
            ctx.show(&snapshots, |s| snapshot_table(s, now_ms()))?;
        }
        SnapshotCommand::Revert(t) => {
            let outcome = client
                .revert_snapshot(&t.vm, &t.snapshot, !t.wait.no_wait)
                .await?;
            ctx.show_outcome(&outcome, |vm| {
                format!(
                    "VM {} reverted to snapshot {}; it is {}\n",
                    t.vm,
                    t.snapshot,
                    vm.state.as_str()
                )
            })?;
        }
        SnapshotCommand::Delete(t) => {
            let outcome = client
                .delete_snapshot(&t.vm, &t.snapshot, !t.wait.no_wait)
                .await?;
            ctx.show_outcome(&outcome, |_| {
                format!("snapshot {} of VM {} deleted\n", t.snapshot, t.vm)
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel vm snapshot list`: oldest first, the current one marked.
pub fn snapshot_table(snapshots: &[vessel_api::Snapshot], now_ms: u64) -> String {
    let mut table = plain_table(Some(&["", "NAME", "PARENT", "TAKEN", "MEMORY"]));
    for s in snapshots {
        table.add_row(vec![
            if s.current { "*" } else { "" }.to_string(),
            s.name.clone(),
            or_dash(s.parent.as_deref()),
            format_age(s.created_at_ms, now_ms),
            if s.memory {
                format_bytes(s.vm_state_bytes)
            } else {
                "-".into()
            },
        ]);
    }
    finish(table)
}
