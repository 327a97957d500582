//! `vessel vm ...`

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Subcommand};
use vessel_api::{
    CreateVmRequest, EditVmRequest, Machine, NicKind, OperationStatus, RestartPolicy,
    StopVmRequest, Vm,
};

use crate::client::{Outcome, VmAction};
use crate::console;
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
    Stats(crate::stats::VmStatsArgs),
    /// Take, list, revert to and delete snapshots of a VM.
    #[command(subcommand)]
    Snapshot(crate::snapshot::SnapshotCommand),
    /// Add, remove and list a VM's NICs on networks.
    #[command(subcommand)]
    Nic(crate::nic::NicCommand),
}

/// A VM name.
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// Name of the VM.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Don't wait for the operation.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Return at once with the operation's id instead of waiting for it to finish.
    ///
    /// Follow the operation with `vessel operation show ID`.
    #[arg(long)]
    pub no_wait: bool,
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

/// `vessel vm create`
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("boot").required(true).args(["kernel", "kernel_image", "disk", "image"])))]
#[command(group(ArgGroup::new("kernel_boot").args(["kernel", "kernel_image"])))]
pub struct CreateArgs {
    /// Name of the new VM: letters, digits, '-', '_' and '.', starting with a letter or digit,
    /// at most 63 characters.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Number of virtual CPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: u32,
    /// Memory size: a number with an optional unit K, M, G or T (powers of 1024), e.g. 512M,
    /// 2G, 1.5G; a bare number means MiB. Must be a whole number of MiB.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_memory)]
    pub memory: u64,
    /// Linux kernel image to boot directly (bzImage or vmlinuz). Selects the `microvm` machine
    /// unless --machine says otherwise.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// An image of kind kernel to boot directly (`vessel image import NAME FILE --kind
    /// kernel`): what project operators boot with, since files on the host need host.files.
    #[arg(long, value_name = "IMAGE", conflicts_with = "disk")]
    pub kernel_image: Option<String>,
    /// Initial ramdisk to load with --kernel or --kernel-image.
    #[arg(
        long,
        value_name = "PATH",
        requires = "kernel_boot",
        conflicts_with_all = ["disk", "initrd_image"]
    )]
    pub initrd: Option<PathBuf>,
    /// An image of kind initrd to load with --kernel or --kernel-image.
    #[arg(
        long,
        value_name = "IMAGE",
        requires = "kernel_boot",
        conflicts_with = "disk"
    )]
    pub initrd_image: Option<String>,
    /// Kernel command line to pass with --kernel, e.g. 'console=ttyS0'.
    #[arg(
        long,
        value_name = "STR",
        requires = "kernel_boot",
        conflicts_with = "disk",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
    /// Disk image to boot from through the firmware (raw or qcow2). Selects the `q35` machine
    /// unless --machine says otherwise.
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// QEMU machine type [default: microvm with --kernel, q35 with --disk].
    #[arg(long, value_name = "MACHINE", value_parser = machine_parser())]
    pub machine: Option<Machine>,
    /// Network interface [default: none].
    #[arg(long, value_name = "KIND", value_parser = nic_parser())]
    pub nic: Option<NicKind>,
    /// A NIC on this network (repeat for more; see `vessel network list`). Each gets a free
    /// MAC and, on a network with a subnet, the next free address.
    #[arg(long = "network", value_name = "NETWORK")]
    pub networks: Vec<String>,
    /// What the daemon does when the VM stops without being asked to [default: never].
    #[arg(long, value_name = "POLICY", value_parser = restart_policy_parser())]
    pub restart_policy: Option<RestartPolicy>,
    /// Start the VM once it is created.
    #[arg(long)]
    pub start: bool,
    /// Make the VM's root disk from this image (see `vessel image list`) and boot from it.
    /// The disk is a linked clone of the image (instant) unless --full-clone or --encrypted.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Size of the root disk made from --image, e.g. 20G [default: the image's size]. Cloud
    /// images grow their file system to it at first boot.
    #[arg(long, value_name = "SIZE", requires = "image", value_parser = vessel_core::units::parse_size_bytes)]
    pub disk_size: Option<u64>,
    /// Copy the image instead of a linked clone: independent of the image, slower to make.
    #[arg(long, requires = "image")]
    pub full_clone: bool,
    /// Encrypt the root disk made from --image with a key of its own (implies a full copy).
    #[arg(long, requires = "image")]
    pub encrypted: bool,
    /// The pool for the root disk [default: the image's pool].
    #[arg(long, value_name = "POOL", requires = "image")]
    pub pool: Option<String>,
    /// cloud-init user-data file (`#cloud-config` YAML or a script) for a NoCloud seed; the
    /// VM's name becomes the guest's hostname.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// cloud-init network-config file (version 1 or 2) for the NoCloud seed.
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// The project the VM belongs to (its quota; who may see and change it) [default: default].
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
}

/// Reads a small text file given on the command line (cloud-init data).
fn read_text(path: &Option<PathBuf>, what: &str) -> Result<Option<String>, CliError> {
    let Some(path) = path else { return Ok(None) };
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::io(format!("cannot read the {what} file {}", path.display()), e))?;
    String::from_utf8(bytes).map(Some).map_err(|_| {
        CliError::usage(
            format!("the {what} file {} is not UTF-8 text", path.display()),
            Some("cloud-init data is YAML or a script"),
        )
    })
}

/// `vessel vm edit`
#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub vm: NameArgs,
    /// New number of virtual CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// New memory size, e.g. 512M or 2G (see `vessel vm create --help`).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// New kernel image; switches a disk-booting VM to direct kernel boot.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// New initial ramdisk for kernel boot.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// New kernel command line for kernel boot.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// New disk image; switches a kernel-booting VM to disk boot.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kernel", "initrd", "cmdline"])]
    pub disk: Option<PathBuf>,
    /// New QEMU machine type.
    #[arg(long, value_name = "MACHINE", value_parser = machine_parser())]
    pub machine: Option<Machine>,
    /// New network interface.
    #[arg(long, value_name = "KIND", value_parser = nic_parser())]
    pub nic: Option<NicKind>,
    /// New restart policy.
    #[arg(long, value_name = "POLICY", value_parser = restart_policy_parser())]
    pub restart_policy: Option<RestartPolicy>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn parse_memory(text: &str) -> Result<u64, String> {
    vessel_core::parse_memory_mib(text)
}

fn machine_parser() -> impl TypedValueParser<Value = Machine> {
    PossibleValuesParser::new([
        PossibleValue::new("microvm")
            .help("minimal machine for direct kernel boot: fast, virtio-mmio devices only"),
        PossibleValue::new("q35").help("PC with firmware and PCI, needed to boot from a disk"),
    ])
    .map(|value| match value.as_str() {
        "microvm" => Machine::Microvm,
        _ => Machine::Q35,
    })
}

fn nic_parser() -> impl TypedValueParser<Value = NicKind> {
    PossibleValuesParser::new([
        PossibleValue::new("user").help("QEMU user-mode NAT: outgoing connections only"),
        PossibleValue::new("none").help("no network interface"),
    ])
    .map(|value| match value.as_str() {
        "user" => NicKind::User,
        _ => NicKind::None,
    })
}

fn restart_policy_parser() -> impl TypedValueParser<Value = RestartPolicy> {
    PossibleValuesParser::new([
        PossibleValue::new("never").help("leave it stopped or crashed"),
        PossibleValue::new("on-failure")
            .help("restart after a crash; a clean guest power-off stays off"),
        PossibleValue::new("always")
            .help("restart whenever it stops without a stop request, power-off included"),
    ])
    .map(|value| match value.as_str() {
        "on-failure" => RestartPolicy::OnFailure,
        "always" => RestartPolicy::Always,
        _ => RestartPolicy::Never,
    })
}

/// Makes a path given on the command line absolute against `cwd`, dropping `.` components.
/// `..` is kept: resolving it without the file system could change the meaning with symlinks.
pub fn absolute_path(path: &Path, cwd: &Path) -> Result<String, CliError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let cleaned: PathBuf = joined
        .components()
        .filter(|component| !matches!(component, Component::CurDir))
        .collect();
    cleaned.into_os_string().into_string().map_err(|raw| {
        CliError::usage(
            format!("the path {raw:?} is not valid UTF-8"),
            Some("rename the file or link to it from a UTF-8 path"),
        )
    })
}

fn optional_path(path: &Option<PathBuf>, cwd: &Path) -> Result<Option<String>, CliError> {
    path.as_deref().map(|p| absolute_path(p, cwd)).transpose()
}

impl CreateArgs {
    /// The API request, with paths made absolute against `cwd`.
    pub fn to_request(&self, cwd: &Path) -> Result<CreateVmRequest, CliError> {
        Ok(CreateVmRequest {
            name: self.name.clone(),
            cpus: self.cpus,
            memory_mib: self.memory,
            kernel: optional_path(&self.kernel, cwd)?,
            initrd: optional_path(&self.initrd, cwd)?,
            kernel_image: self.kernel_image.clone(),
            initrd_image: self.initrd_image.clone(),
            cmdline: self.cmdline.clone(),
            disk: optional_path(&self.disk, cwd)?,
            machine: self.machine,
            nic: self.nic,
            restart_policy: self.restart_policy,
            start: self.start,
            image: self.image.clone(),
            disk_size_bytes: self.disk_size,
            full_clone: self.full_clone,
            encrypted: self.encrypted,
            pool: self.pool.clone(),
            user_data: read_text(&self.user_data, "user-data")?,
            network_config: read_text(&self.network_config, "network-config")?,
            nics: self
                .networks
                .iter()
                .map(|network| vessel_api::AddNicRequest {
                    network: network.clone(),
                    ..Default::default()
                })
                .collect(),
            project: self.project.clone(),
        })
    }
}

impl EditArgs {
    /// The API request, with paths made absolute against `cwd`.
    pub fn to_request(&self, cwd: &Path) -> Result<EditVmRequest, CliError> {
        let request = EditVmRequest {
            cpus: self.cpus,
            memory_mib: self.memory,
            kernel: optional_path(&self.kernel, cwd)?,
            initrd: optional_path(&self.initrd, cwd)?,
            cmdline: self.cmdline.clone(),
            disk: optional_path(&self.disk, cwd)?,
            machine: self.machine,
            nic: self.nic,
            restart_policy: self.restart_policy,
        };
        if request == EditVmRequest::default() {
            return Err(CliError::usage(
                format!("nothing to change for VM {}", self.vm.name),
                Some(
                    "give at least one of --cpus, --memory, --kernel, --initrd, --cmdline, \
                     --disk, --machine, --nic or --restart-policy",
                ),
            ));
        }
        Ok(request)
    }
}

fn current_dir() -> Result<PathBuf, CliError> {
    std::env::current_dir().map_err(|err| {
        CliError::io(
            "cannot read the current directory to make relative paths absolute",
            err,
        )
    })
}

/// `VM web1 is running` (with the reason, when there is one).
fn state_line(vm: &Vm) -> String {
    match &vm.reason {
        Some(reason) => format!("VM {} is {} ({reason})\n", vm.spec.name, vm.state.as_str()),
        None => format!("VM {} is {}\n", vm.spec.name, vm.state.as_str()),
    }
}

pub(crate) async fn run(command: VmCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    let client = &ctx.client;
    match command {
        VmCommand::Create(args) if args.full_clone || args.encrypted => {
            // A copy of the image: follow it with a progress bar.
            let request = args.to_request(&current_dir()?)?;
            let outcome = client.create_vm(&request, false).await?;
            match outcome {
                Outcome::Accepted(accepted) if !args.wait.no_wait => {
                    let what = format!("copying image for {}", args.name);
                    crate::progress::follow(ctx, accepted.operation, &what).await?;
                    let vm = client.get_vm(&args.name).await?;
                    ctx.show(&vm, |vm| {
                        format!("VM {} created; it is {}\n", vm.spec.name, vm.state.as_str())
                    })?;
                }
                other => ctx.show_outcome(&other, |vm| {
                    format!("VM {} created; it is {}\n", vm.spec.name, vm.state.as_str())
                })?,
            }
        }
        VmCommand::Create(args) => {
            let request = args.to_request(&current_dir()?)?;
            let outcome = client.create_vm(&request, !args.wait.no_wait).await?;
            ctx.show_outcome(&outcome, |vm| {
                format!("VM {} created; it is {}\n", vm.spec.name, vm.state.as_str())
            })?;
        }
        VmCommand::List => {
            let vms = client.list_vms().await?;
            ctx.show(&vms, |vms| output::vm_table(vms))?;
        }
        VmCommand::Show(args) => {
            let vm = client.get_vm(&args.name).await?;
            // What the guest agent says, for people; scripts ask GET /v1/vms/{name}/guest.
            let guest = match ctx.output {
                crate::OutputFormat::Table if vm.state.has_process() => {
                    client.guest_info(&args.name).await.ok()
                }
                _ => None,
            };
            ctx.show(&vm, |vm| {
                let mut text = output::vm_details(vm, output::now_ms());
                if let Some(guest) = &guest {
                    text.push_str(&output::guest_details(guest));
                }
                text
            })?;
        }
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
        VmCommand::Delete(args) => {
            let outcome = client
                .delete_vm(&args.vm.name, args.force, !args.wait.no_wait)
                .await?;
            ctx.show_outcome(&outcome, |_| format!("VM {} deleted\n", args.vm.name))?;
            if let Outcome::Done(op) = outcome {
                if op.status == OperationStatus::Failed {
                    return Err(CliError::OperationFailed {
                        code: op.error_code(),
                        id: op.id,
                        message: op.error.unwrap_or_else(|| "no reason given".into()),
                    });
                }
            }
        }
        VmCommand::Log(args) => {
            let body = client.console_log(&args.vm.name, args.follow).await?;
            console::stream_log(body)
                .await
                .map_err(|err| CliError::io("reading the console log failed", err))?;
        }
        VmCommand::Snapshot(command) => return crate::snapshot::run(command, ctx).await,
        VmCommand::Nic(command) => return crate::nic::run(command, ctx).await,
        VmCommand::Stats(args) => return crate::stats::vm_stats(ctx, &args).await,
        VmCommand::Console(args) => {
            let stream = client.console_attach(&args.name).await?;
            let end = console::attach(stream, &args.name)
                .await
                .map_err(|err| CliError::io("the console session failed", err))?;
            if let console::ConsoleEnd::Signal(signo) = end {
                // The shell convention for "ended by a signal".
                return Ok(crate::error::exit_code(128 + signo));
            }
        }
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
    ctx.show_outcome(&outcome, state_line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, GlobalOpts, OutputFormat};
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    #[command(name = "vessel")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
        #[command(flatten)]
        global: GlobalOpts,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vessel").chain(args.iter().copied()))
    }

    fn create(args: &[&str]) -> CreateArgs {
        match parse(args).unwrap().command {
            Command::Vm(VmCommand::Create(create)) => create,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_defaults_to_one_cpu_and_256m() {
        let args = create(&["vm", "create", "web1", "--kernel", "/boot/vmlinuz"]);
        let req = args.to_request(Path::new("/home/me")).unwrap();
        assert_eq!(req.name, "web1");
        assert_eq!(req.cpus, 1);
        assert_eq!(req.memory_mib, 256);
        assert_eq!(req.kernel.as_deref(), Some("/boot/vmlinuz"));
        assert_eq!(req.disk, None);
        assert_eq!(req.machine, None);
        assert_eq!(req.nic, None);
        assert_eq!(req.restart_policy, None);
        assert!(!req.start);
        assert!(!args.wait.no_wait);
    }

    #[test]
    fn create_reads_memory_units() {
        for (text, mib) in [("512M", 512), ("2G", 2048), ("1.5G", 1536), ("64", 64)] {
            let args = create(&["vm", "create", "a", "--disk", "/d.img", "--memory", text]);
            assert_eq!(args.memory, mib, "{text}");
        }
        let err = parse(&["vm", "create", "a", "--disk", "/d", "--memory", "12X"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("unknown size unit"), "{err}");
    }

    #[test]
    fn create_needs_exactly_one_of_kernel_and_disk() {
        assert!(parse(&["vm", "create", "a"]).is_err());
        assert!(parse(&["vm", "create", "a", "--kernel", "/k", "--disk", "/d"]).is_err());
        assert!(parse(&["vm", "create", "a", "--disk", "/d", "--initrd", "/i"]).is_err());
        assert!(parse(&["vm", "create", "a", "--disk", "/d", "--cmdline", "x"]).is_err());
        let kernel = create(&[
            "vm",
            "create",
            "a",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
        ]);
        let req = kernel.to_request(Path::new("/")).unwrap();
        assert_eq!(req.initrd.as_deref(), Some("/i"));
        assert_eq!(req.cmdline.as_deref(), Some("console=ttyS0 quiet"));
        let disk = create(&["vm", "create", "a", "--disk", "/d.qcow2"]);
        let req = disk.to_request(Path::new("/")).unwrap();
        assert_eq!(req.disk.as_deref(), Some("/d.qcow2"));
        assert_eq!(req.kernel, None);
    }

    #[test]
    fn create_makes_relative_paths_absolute() {
        let args = create(&[
            "vm",
            "create",
            "a",
            "--kernel",
            "./images/vmlinuz",
            "--initrd",
            "../initrd.img",
        ]);
        let req = args.to_request(Path::new("/home/me/vms")).unwrap();
        assert_eq!(req.kernel.as_deref(), Some("/home/me/vms/images/vmlinuz"));
        assert_eq!(req.initrd.as_deref(), Some("/home/me/vms/../initrd.img"));
        let args = create(&["vm", "create", "a", "--disk", "disk.qcow2"]);
        let req = args.to_request(Path::new("/srv")).unwrap();
        assert_eq!(req.disk.as_deref(), Some("/srv/disk.qcow2"));
    }

    #[test]
    fn create_reads_machine_nic_policy_and_start() {
        let args = create(&[
            "vm",
            "create",
            "a",
            "--cpus",
            "4",
            "--kernel",
            "/k",
            "--machine",
            "q35",
            "--nic",
            "user",
            "--restart-policy",
            "on-failure",
            "--start",
            "--no-wait",
        ]);
        let req = args.to_request(Path::new("/")).unwrap();
        assert_eq!(req.cpus, 4);
        assert_eq!(req.machine, Some(Machine::Q35));
        assert_eq!(req.nic, Some(NicKind::User));
        assert_eq!(req.restart_policy, Some(RestartPolicy::OnFailure));
        assert!(req.start);
        assert!(args.wait.no_wait);
        assert!(parse(&["vm", "create", "a", "--kernel", "/k", "--machine", "pc"]).is_err());
        assert!(parse(&["vm", "create", "a", "--kernel", "/k", "--cpus", "0"]).is_err());
    }

    #[test]
    fn edit_needs_a_change_and_sends_only_it() {
        let cli = parse(&["vm", "edit", "a"]).unwrap();
        let Command::Vm(VmCommand::Edit(edit)) = cli.command else {
            panic!("not an edit");
        };
        let err = edit.to_request(Path::new("/")).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.render().contains("nothing to change"),
            "{}",
            err.render()
        );
        assert!(parse(&["vm", "edit", "a", "--disk", "/d", "--kernel", "/k"]).is_err());
        let cli = parse(&["vm", "edit", "a", "--memory", "1G", "--initrd", "i.img"]).unwrap();
        let Command::Vm(VmCommand::Edit(edit)) = cli.command else {
            panic!("not an edit");
        };
        let req = edit.to_request(Path::new("/x")).unwrap();
        assert_eq!(
            req,
            EditVmRequest {
                memory_mib: Some(1024),
                initrd: Some("/x/i.img".into()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn global_options_work_anywhere_and_default() {
        let cli = parse(&["vm", "list"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Table);
        let cli = parse(&["vm", "list", "--output", "json", "--socket", "/tmp/v.sock"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.socket, PathBuf::from("/tmp/v.sock"));
        let cli = parse(&["-o", "json", "host", "check"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
    }

    #[test]
    fn stop_force_and_timeout_exclude_each_other() {
        assert!(parse(&["vm", "stop", "a", "--force", "--timeout", "5"]).is_err());
        let cli = parse(&["vm", "stop", "a", "--timeout", "5", "--no-wait"]).unwrap();
        let Command::Vm(VmCommand::Stop(stop)) = cli.command else {
            panic!("not a stop");
        };
        assert_eq!(stop.timeout, Some(5));
        assert!(stop.wait.no_wait);
    }
}
