//! `vessel vm ...`: the command tree and what each verb does. Its arguments that carry a
//! spec (`create`, `edit`) are in `args.rs`, its tables in `render.rs`; snapshots, NICs and
//! the console are verbs of their own files.

mod args;
pub mod console;
mod nic;
mod render;
mod snapshot;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{OperationStatus, StopVmRequest};

pub use self::args::{CreateArgs, EditArgs};
use crate::args::{current_dir, WaitArgs};
use crate::client::{Outcome, VmAction};
use crate::operation::wait;
use crate::output;
use crate::{CliError, Context};

const CREATE_EXAMPLES: &str = "\
Examples:
  Create a VM that boots a kernel directly, and start it:
    vessel vm create web1 --cpus 2 --memory 512M --kernel ./vmlinuz --initrd ./initrd.img \\
        --cmdline 'console=ttyS0' --nic user --start

  Create a VM that boots from a disk image and restarts when it crashes:
    vessel vm create db1 --memory 2G --disk /var/lib/images/db1.qcow2 --restart-policy on-failure

  Create a VM from an image with a 20G root disk, configured by cloud-init, and start it:
    vessel vm create web2 --image debian12 --disk-size 20G --memory 1G --nic user \\
        --user-data ./web2.yaml --start";

const LIST_EXAMPLES: &str = "\
Examples:
  vessel vm list
  vessel vm list --output json | jq -r '.[] | select(.state == \"running\") | .spec.name'";

const SHOW_EXAMPLES: &str = "\
Examples:
  vessel vm show web1
  vessel vm show web1 -o json | jq .state";

const START_EXAMPLES: &str = "\
Examples:
  vessel vm start web1
  vessel vm start web1 --no-wait     # prints the operation id at once";

const STOP_EXAMPLES: &str = "\
Examples:
  vessel vm stop web1                # ACPI power-off, forced after 30 seconds
  vessel vm stop web1 --timeout 120  # give the guest two minutes
  vessel vm stop web1 --force        # end QEMU at once";

const EDIT_EXAMPLES: &str = "\
Examples:
  vessel vm edit web1 --memory 1G --cpus 4
  vessel vm edit web1 --cmdline 'console=ttyS0 quiet'
  vessel vm edit web1 --disk ./web1.qcow2   # switch to booting from a disk";

const DELETE_EXAMPLES: &str = "\
Examples:
  vessel vm delete web1
  vessel vm delete web1 --force      # kill it first if it is running";

const LOG_EXAMPLES: &str = "\
Examples:
  vessel vm log web1
  vessel vm log web1 --follow        # keep printing until Ctrl-C";

const CONSOLE_EXAMPLES: &str = "\
Examples:
  vessel vm console web1             # interactive; Ctrl-] detaches
  printf 'root\\n' | vessel vm console web1";

/// `vessel vm <verb>`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a new VM (and optionally start it).
    ///
    /// The VM boots either a kernel directly (--kernel, with optional --initrd and --cmdline)
    /// or from a disk image through the firmware (--disk); exactly one of the two is required.
    /// Relative paths are made absolute against the current directory before they are sent,
    /// because the daemon runs elsewhere; the daemon checks that it can read them.
    ///
    /// Without --start the VM is created stopped.
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// List all VMs with their state and size.
    ///
    /// Columns: NAME; STATE, the observed state (stopped, starting, running, paused, stopping,
    /// crashed), shown as `observed->desired` while the daemon is still getting there; CPUS;
    /// MEMORY; BOOT (kernel or disk); PID of the QEMU process; RESTARTS the daemon made under
    /// the restart policy.
    #[command(visible_alias = "ls", after_help = LIST_EXAMPLES)]
    List,
    /// Show everything about one VM.
    ///
    /// Prints the spec (CPUs, memory, machine, boot files, NIC, restart policy), the desired
    /// and observed state with the reason for it, the QEMU pid and accelerator while it runs,
    /// and when it was created and last changed state.
    #[command(after_help = SHOW_EXAMPLES)]
    Show(NameArgs),
    /// Start a stopped or crashed VM.
    ///
    /// Waits until QEMU runs the guest, then prints the VM's state.
    #[command(after_help = START_EXAMPLES)]
    Start(ActionArgs),
    /// Stop a VM: ACPI power-down, forced after a timeout.
    ///
    /// Asks the guest to power off (like pressing the power button) and waits for it; if the
    /// guest has not powered off when the timeout runs out, QEMU is ended. --force ends QEMU
    /// at once.
    #[command(after_help = STOP_EXAMPLES)]
    Stop(StopArgs),
    /// End a VM's QEMU process at once, like pulling the plug.
    ///
    /// The guest gets no chance to shut down cleanly. The VM is then stopped and is not
    /// restarted by its restart policy.
    Kill(ActionArgs),
    /// Reboot a VM.
    ///
    /// By default a clean reboot: the guest is powered off through ACPI and started again.
    /// --force resets the virtual machine at once instead, like a reset button.
    Reboot(RebootArgs),
    /// Pause a running VM: its vCPUs stop, its memory stays.
    Pause(ActionArgs),
    /// Resume a paused VM.
    Resume(ActionArgs),
    /// Change a stopped VM's settings.
    ///
    /// Only the settings given change. Giving --disk switches a kernel-booting VM to disk
    /// boot; giving --kernel switches a disk-booting VM to kernel boot. The VM must be
    /// stopped; stop it first with `vessel vm stop`.
    #[command(after_help = EDIT_EXAMPLES)]
    Edit(EditArgs),
    /// Delete a VM and everything the daemon keeps for it.
    ///
    /// Refused while the VM runs, unless --force, which kills it first. Disk images and kernel
    /// files given at creation are not deleted: they belong to you.
    #[command(visible_alias = "rm", after_help = DELETE_EXAMPLES)]
    Delete(DeleteArgs),
    /// Print a VM's serial console log.
    ///
    /// The daemon keeps everything the guest wrote to its serial console in a size-capped,
    /// rotated log. --follow keeps printing new output as it comes, until Ctrl-C or until the
    /// daemon ends the stream.
    #[command(after_help = LOG_EXAMPLES)]
    Log(LogArgs),
    /// Attach to a VM's serial console.
    ///
    /// When standard input is a terminal, it is put in raw mode so that every key, Ctrl-C
    /// included, goes to the VM; press Ctrl-] to detach. The terminal is restored however the
    /// session ends. When standard input is not a terminal, bytes are copied unchanged until
    /// either side ends; after the input ends, the console's output is still printed until it
    /// has been quiet for a second, so that piped commands show their answers.
    #[command(after_help = CONSOLE_EXAMPLES)]
    Console(NameArgs),
    /// Show a VM's performance figures: CPU, memory, disks, network.
    ///
    /// CPU time of the QEMU process and of the vCPU threads alone, CPU use in percent of one
    /// core, the time vCPUs waited for a host CPU (the host's view of steal time), resident
    /// memory, and for each disk the bytes, operations and mean latency of reads and writes.
    /// A stopped VM shows zeros. --watch samples again every few seconds, with current rates.
    #[command(
        after_help = "Examples:\n  vessel vm stats web1\n  vessel vm stats web1 --watch 5\n  vessel vm stats web1 -o json"
    )]
    Stats(crate::observe::stats::VmStatsArgs),
    /// Take, list, revert to and delete snapshots of a VM.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Add, remove and list a VM's NICs on networks.
    #[command(subcommand)]
    Nic(nic::NicCommand),
}

/// A VM name.
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// Name of the VM.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// A VM name and --no-wait.
#[derive(Debug, Clone, Args)]
pub struct ActionArgs {
    #[command(flatten)]
    pub vm: NameArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vessel vm stop`
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub vm: NameArgs,
    /// End QEMU at once instead of asking the guest to power off.
    #[arg(long, conflicts_with = "timeout")]
    pub force: bool,
    /// Seconds to wait for the guest to power off before ending QEMU [default: 30, chosen by
    /// the daemon].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vessel vm reboot`
#[derive(Debug, Clone, Args)]
pub struct RebootArgs {
    #[command(flatten)]
    pub vm: NameArgs,
    /// Reset the VM at once instead of a clean power-off and start.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vessel vm delete`
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub vm: NameArgs,
    /// Kill the VM first if it is running, instead of refusing.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vessel vm log`
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub vm: NameArgs,
    /// Keep printing new console output as it arrives, until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

pub(crate) async fn run(command: VmCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    let client = &ctx.client;
    match command {
        VmCommand::Create(args) => create(ctx, args).await?,
        VmCommand::List => {
            let vms = client.list_vms().await?;
            ctx.show(&vms, |vms| render::vm_table(vms))?;
        }
        VmCommand::Show(args) => show(ctx, args).await?,
        VmCommand::Start(args) => action(ctx, &args.vm, VmAction::Start, args.wait).await?,
        VmCommand::Stop(args) => {
            let stop = VmAction::Stop(StopVmRequest {
                force: args.force,
                timeout_secs: args.timeout,
            });
            action(ctx, &args.vm, stop, args.wait).await?
        }
        VmCommand::Kill(args) => action(ctx, &args.vm, VmAction::Kill, args.wait).await?,
        VmCommand::Reboot(args) => {
            let reboot = VmAction::Reboot { force: args.force };
            action(ctx, &args.vm, reboot, args.wait).await?
        }
        VmCommand::Pause(args) => action(ctx, &args.vm, VmAction::Pause, args.wait).await?,
        VmCommand::Resume(args) => action(ctx, &args.vm, VmAction::Resume, args.wait).await?,
        VmCommand::Edit(args) => {
            let request = args.to_request(&current_dir()?)?;
            let outcome = client
                .edit_vm(&args.vm.name, &request, !args.wait.no_wait)
                .await?;
            ctx.show_outcome(&outcome, |vm| format!("VM {} updated\n", vm.spec.name))?;
        }
        VmCommand::Delete(args) => delete(ctx, args).await?,
        VmCommand::Log(args) => {
            let body = client.console_log(&args.vm.name, args.follow).await?;
            console::stream_log(body)
                .await
                .map_err(|err| CliError::io("reading the console log failed", err))?;
        }
        VmCommand::Snapshot(command) => return snapshot::run(command, ctx).await,
        VmCommand::Nic(command) => return nic::run(command, ctx).await,
        VmCommand::Stats(args) => return crate::observe::stats::vm_stats(ctx, &args).await,
        VmCommand::Console(args) => return console(ctx, args).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel vm create`. A VM whose root disk is a full copy of an image (`--full-clone`,
/// `--encrypted`) is created without waiting, and the copy followed with a progress bar.
async fn create(ctx: &Context, args: CreateArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let request = args.to_request(&current_dir()?)?;
    let copies_image = args.full_clone || args.encrypted;
    let outcome = client
        .create_vm(&request, !args.wait.no_wait && !copies_image)
        .await?;
    match outcome {
        Outcome::Accepted(accepted) if copies_image && !args.wait.no_wait => {
            let what = format!("copying image for {}", args.name);
            wait::follow(ctx, accepted.operation, &what).await?;
            let vm = client.get_vm(&args.name).await?;
            ctx.show(&vm, render::created_line)
        }
        other => ctx.show_outcome(&other, render::created_line),
    }
}

/// `vessel vm show`
async fn show(ctx: &Context, args: NameArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let vm = client.get_vm(&args.name).await?;
    // What the guest agent says, for people; scripts ask GET /v1/vms/{name}/guest.
    let guest = match ctx.output {
        crate::OutputFormat::Table if vm.state.has_process() => {
            client.guest_info(&args.name).await.ok()
        }
        _ => None,
    };
    ctx.show(&vm, |vm| {
        let mut text = render::vm_details(vm, output::now_ms());
        if let Some(guest) = &guest {
            text.push_str(&render::guest_details(guest));
        }
        text
    })?;
    Ok(())
}

/// `vessel vm delete`
async fn delete(ctx: &Context, args: DeleteArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let outcome = client
        .delete_vm(&args.vm.name, args.force, !args.wait.no_wait)
        .await?;
    ctx.show_outcome(&outcome, |_| format!("VM {} deleted\n", args.vm.name))?;
    if let Outcome::Done(op) = outcome {
        if op.status == OperationStatus::Failed {
            return Err(wait::failed(op, None));
        }
    }
    Ok(())
}

/// `vessel vm console`
async fn console(ctx: &Context, args: NameArgs) -> Result<ExitCode, CliError> {
    let client = &ctx.client;
    let stream = client.console_attach(&args.name).await?;
    let end = console::attach(stream, &args.name)
        .await
        .map_err(|err| CliError::io("the console session failed", err))?;
    if let console::ConsoleEnd::Signal(signo) = end {
        // The shell convention for "ended by a signal".
        return Ok(crate::error::exit_code(128 + signo));
    }
    Ok(ExitCode::SUCCESS)
}

async fn action(
    ctx: &Context,
    vm: &NameArgs,
    action: VmAction,
    wait: WaitArgs,
) -> Result<(), CliError> {
    let outcome = ctx
        .client
        .vm_action(&vm.name, &action, !wait.no_wait)
        .await?;
    ctx.show_outcome(&outcome, render::state_line)
}
