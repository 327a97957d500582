//! The arguments of `vessel vm create` and `vessel vm edit`, and how they become API requests.

use std::path::{Path, PathBuf};

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args};
use vessel_api::{CreateVmRequest, EditVmRequest, Machine, NicKind, RestartPolicy};

use super::NameArgs;
use crate::args::{optional_path, WaitArgs};
use crate::CliError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::VmCommand;
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
