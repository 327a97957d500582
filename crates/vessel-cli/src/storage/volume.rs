//! `vessel volume ...`

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use vessel_api::{
    CloneVolumeRequest, CreateVolumeRequest, ResizeVolumeRequest, Volume, VolumeFormat,
};

use crate::args::{absolute_from_cwd, source_arg, WaitArgs};
use crate::operation::wait::follow_outcome;
use crate::output::{finish, format_bytes, key_values, list_or_dash, or_dash, plain_table};
use crate::{CliError, Context};

/// `vessel volume <verb>`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: empty, or a linked clone of another volume with --backing.
    #[command(
        after_help = "Examples:\n  vessel volume create data1 --size 20G\n  vessel volume create scratch --size 512M --format raw --pool fast\n  vessel volume create web1-root --backing debian-base    # linked clone, instant\n  vessel volume create secret1 --size 10G --encrypted"
    )]
    Create(VolumeCreateArgs),
    /// List volumes with their size, allocation, backing volume and the VMs that use them.
    #[command(visible_alias = "ls")]
    List(VolumeListArgs),
    /// Show one volume, with its backing chain.
    Show(VolumeArgs),
    /// Change a volume's virtual size.
    ///
    /// A volume in use by a running VM is grown online (QEMU's block_resize): the guest sees
    /// the new size at once and can grow its partition and file system. Shrinking needs
    /// --shrink and no running VM using the volume; shrink the guest's file system first.
    #[command(
        after_help = "Examples:\n  vessel volume resize data1 --size 40G\n  vessel volume resize data1 --size 10G --shrink"
    )]
    Resize(VolumeResizeArgs),
    /// Copy a volume into a new one in the same pool: a full copy, or an instant linked clone.
    #[command(
        after_help = "Examples:\n  vessel volume clone debian-base web1-root --linked\n  vessel volume clone data1 data1-copy"
    )]
    Clone(VolumeCloneArgs),
    /// Delete a volume. Refused while a VM uses it or a linked clone depends on it.
    #[command(visible_alias = "rm")]
    Delete(VolumeArgs),
    /// Attach a volume to a VM as a disk, also while the VM runs (hot-plug).
    ///
    /// The volume becomes the VM's next SCSI disk (a Linux guest usually names them sda, sdb,
    /// ... in attach order; its serial number is the volume's name, for /dev/disk/by-id). A running VM sees the new disk at once.
    /// A volume is written by one running VM at a time unless every attachment is --shareable.
    #[command(
        after_help = "Examples:\n  vessel volume attach data1 web1\n  vessel volume attach iso1 web1 --read-only\n  vessel volume attach shared web1 --shareable   # cluster file systems only"
    )]
    Attach(VolumeAttachArgs),
    /// Import a disk image file or URL as a new (writable) volume.
    ///
    /// Like `vessel image import`, with a progress bar and Ctrl-C to cancel, but the result is
    /// an ordinary volume, e.g. a disk exported on another server with `vessel volume export`.
    #[command(
        after_help = "Examples:\n  vessel volume import data1 /backup/data1.qcow2\n  vessel volume import data1 https://files.example.com/data1.qcow2 --sha256 <HEX>"
    )]
    Import(VolumeImportArgs),
    /// Export a volume to a standalone, compressed qcow2 file on the daemon's host.
    ///
    /// The file holds the volume's whole content (a linked clone is flattened), so it can be
    /// carried to another server and imported there with `vessel volume import`. An encrypted
    /// volume is exported decrypted: protect the file.
    #[command(
        after_help = "Examples:\n  vessel volume export data1 /backup/data1.qcow2\n  vessel volume export data1 /backup/data1.qcow2 --no-compress --overwrite"
    )]
    Export(VolumeExportArgs),
    /// Detach a volume from a VM, also while the VM runs (hot-unplug).
    ///
    /// A running guest is told the disk goes away; unmount it in the guest first.
    #[command(after_help = "Examples:\n  vessel volume detach data1 web1")]
    Detach(VolumeDetachArgs),
}

#[derive(Debug, Clone, Args)]
pub struct VolumeAttachArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// The VM to attach it to.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The guest cannot write to the disk.
    #[arg(long)]
    pub read_only: bool,
    /// Let several running VMs use the volume at once (for cluster file systems).
    #[arg(long)]
    pub shareable: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeImportArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// A file on the daemon's host or an http(s) URL.
    #[arg(value_name = "FILE|URL")]
    pub source: String,
    /// The SHA-256 the source must have.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Store it in this format [default: the source's].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// The project the volume belongs to (its disk quota counts it) [default: default].
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeExportArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// The file to write (on the daemon's host).
    #[arg(value_name = "FILE")]
    pub path: String,
    /// Write uncompressed clusters (faster, bigger).
    #[arg(long)]
    pub no_compress: bool,
    /// Replace the file if it exists.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeDetachArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// The VM to detach it from.
    #[arg(value_name = "VM")]
    pub vm: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Qcow2,
    Raw,
}

impl From<FormatArg> for VolumeFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Qcow2 => VolumeFormat::Qcow2,
            FormatArg::Raw => VolumeFormat::Raw,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PoolArg {
    /// The pool the volume is in.
    #[arg(long, value_name = "POOL", default_value = "default")]
    pub pool: String,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeArgs {
    /// Name of the volume.
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub pool: PoolArg,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeCreateArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// Virtual size, e.g. 20G or 512M (a multiple of 512 bytes). Optional with --backing.
    #[arg(long, value_name = "SIZE", value_parser = vessel_core::units::parse_size_bytes)]
    pub size: Option<u64>,
    /// Image format.
    #[arg(long, value_enum, default_value = "qcow2")]
    pub format: FormatArg,
    /// Make it a linked clone (qcow2 overlay) of this volume of the same pool.
    #[arg(long, value_name = "VOLUME")]
    pub backing: Option<String>,
    /// Encrypt it (LUKS inside qcow2) with a random key of its own, kept wrapped by the host's
    /// master key. The data in the file is unreadable without the daemon's keys.
    #[arg(long, conflicts_with = "backing")]
    pub encrypted: bool,
    /// The project the volume belongs to [default: default].
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeListArgs {
    /// Only this pool's volumes [default: every pool].
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeResizeArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// New virtual size, e.g. 40G.
    #[arg(long, value_name = "SIZE", value_parser = vessel_core::units::parse_size_bytes)]
    pub size: u64,
    /// Allow making it smaller: data past the new end is lost.
    #[arg(long)]
    pub shrink: bool,
}

#[derive(Debug, Clone, Args)]
pub struct VolumeCloneArgs {
    /// The volume to copy.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Name of the new volume.
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub pool: PoolArg,
    /// A linked clone: instant, but the source must stay as long as the clone exists.
    #[arg(long)]
    pub linked: bool,
}

fn created(volume: &vessel_api::Volume) -> String {
    format!(
        "volume {} created in pool {} ({})\n",
        volume.name, volume.pool, volume.path
    )
}

pub(crate) async fn run(command: VolumeCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    let client = &ctx.client;
    match command {
        VolumeCommand::Create(args) => create(ctx, args).await?,
        VolumeCommand::List(args) => list(ctx, args).await?,
        VolumeCommand::Show(args) => {
            let volume = client.get_volume(&args.pool.pool, &args.name).await?;
            ctx.show(&volume, volume_details)?;
        }
        VolumeCommand::Resize(args) => {
            let request = ResizeVolumeRequest {
                size_bytes: args.size,
                shrink: args.shrink,
            };
            let volume = client
                .resize_volume(&args.volume.pool.pool, &args.volume.name, &request)
                .await?;
            ctx.show(&volume, volume_details)?;
        }
        VolumeCommand::Clone(args) => clone(ctx, args).await?,
        VolumeCommand::Delete(args) => {
            client.delete_volume(&args.pool.pool, &args.name).await?;
            ctx.print(&format!("volume {} deleted\n", args.name))?;
        }
        VolumeCommand::Import(args) => import(ctx, args).await?,
        VolumeCommand::Export(args) => export(ctx, args).await?,
        VolumeCommand::Attach(args) => attach(ctx, args).await?,
        VolumeCommand::Detach(args) => detach(ctx, args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel volume create`
async fn create(ctx: &Context, args: VolumeCreateArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let request = CreateVolumeRequest {
        name: args.volume.name,
        format: args.format.into(),
        size_bytes: args.size,
        backing: args.backing,
        encrypted: args.encrypted,
        project: args.project.clone(),
    };
    let volume = client
        .create_volume(&args.volume.pool.pool, &request)
        .await?;
    ctx.show(&volume, created)?;
    Ok(())
}

/// `vessel volume list`
async fn list(ctx: &Context, args: VolumeListArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let pools = match args.pool {
        Some(pool) => vec![pool],
        None => client
            .list_pools()
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect(),
    };
    let mut volumes = Vec::new();
    for pool in pools {
        volumes.extend(client.list_volumes(&pool).await?);
    }
    ctx.show(&volumes, |v| volume_table(v))?;
    Ok(())
}

/// `vessel volume clone`
async fn clone(ctx: &Context, args: VolumeCloneArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let request = CloneVolumeRequest {
        name: args.name,
        linked: args.linked,
    };
    if args.linked {
        let volume = client
            .clone_volume(&args.pool.pool, &args.source, &request)
            .await?;
        ctx.show(&volume, created)?;
    } else {
        let outcome = client
            .start_clone_volume(&args.pool.pool, &args.source, &request)
            .await?;
        let what = format!("copying {}", args.source);
        if let Some(volume) = follow_outcome(ctx, outcome, false, &what).await? {
            ctx.show(&volume, created)?;
        }
    }
    Ok(())
}

/// `vessel volume import`
async fn import(ctx: &Context, args: VolumeImportArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let request = vessel_api::ImportVolumeRequest {
        name: args.volume.name.clone(),
        source: source_arg(&args.source)?,
        sha256: args.sha256,
        format: args.format.map(Into::into),
        project: args.project,
    };
    let outcome = client
        .import_volume(&args.volume.pool.pool, &request, false)
        .await?;
    let what = format!("importing {}", args.volume.name);
    if let Some(volume) = follow_outcome(ctx, outcome, args.wait.no_wait, &what).await? {
        ctx.show(&volume, created)?;
    }
    Ok(())
}

/// `vessel volume export`
async fn export(ctx: &Context, args: VolumeExportArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let request = vessel_api::ExportVolumeRequest {
        path: absolute_from_cwd(std::path::Path::new(&args.path))?,
        compress: !args.no_compress,
        overwrite: args.overwrite,
    };
    let outcome = client
        .export_volume(&args.volume.pool.pool, &args.volume.name, &request, false)
        .await?;
    let what = format!("exporting {}", args.volume.name);
    if let Some(file) = follow_outcome(ctx, outcome, args.wait.no_wait, &what).await? {
        ctx.show(&file, |f: &vessel_api::ExportedVolume| {
            format!(
                "volume {} exported to {} ({}, sha256 {})\n",
                args.volume.name,
                f.path,
                vessel_core::units::format_size_bytes(f.bytes),
                f.sha256
            )
        })?;
    }
    Ok(())
}

/// `vessel volume attach`
async fn attach(ctx: &Context, args: VolumeAttachArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let request = vessel_api::AttachDiskRequest {
        pool: Some(args.volume.pool.pool.clone()),
        volume: args.volume.name.clone(),
        read_only: args.read_only,
        shareable: args.shareable,
    };
    let outcome = client
        .attach_disk(&args.vm, &request, !args.wait.no_wait)
        .await?;
    ctx.show_outcome(&outcome, |vm| {
        format!(
            "volume {} attached to VM {} ({})\n",
            args.volume.name,
            vm.spec.name,
            vm.state.as_str()
        )
    })?;
    Ok(())
}

/// `vessel volume detach`
async fn detach(ctx: &Context, args: VolumeDetachArgs) -> Result<(), CliError> {
    let client = &ctx.client;
    let outcome = client
        .detach_disk(
            &args.vm,
            &args.volume.pool.pool,
            &args.volume.name,
            !args.wait.no_wait,
        )
        .await?;
    ctx.show_outcome(&outcome, |vm| {
        format!(
            "volume {} detached from VM {}\n",
            args.volume.name, vm.spec.name
        )
    })?;
    Ok(())
}

/// `vessel volume list`.
pub fn volume_table(volumes: &[Volume]) -> String {
    let mut table = plain_table(Some(&[
        "POOL",
        "NAME",
        "FORMAT",
        "SIZE",
        "ALLOCATED",
        "BACKING",
        "USED BY",
    ]));
    for volume in volumes {
        table.add_row(vec![
            volume.pool.clone(),
            volume.name.clone(),
            volume.format.as_str().to_string(),
            format_bytes(volume.virtual_bytes),
            format_bytes(volume.allocated_bytes),
            or_dash(volume.backing_volume.as_deref()),
            list_or_dash(&volume.used_by, ","),
        ]);
    }
    finish(table)
}

/// `vessel volume show`.
pub fn volume_details(volume: &Volume) -> String {
    key_values(vec![
        ("Pool", volume.pool.clone()),
        ("Name", volume.name.clone()),
        ("Format", volume.format.as_str().to_string()),
        (
            "Encrypted",
            if volume.encrypted { "yes (LUKS)" } else { "no" }.to_string(),
        ),
        ("Path", volume.path.clone()),
        ("Virtual size", format_bytes(volume.virtual_bytes)),
        ("Allocated", format_bytes(volume.allocated_bytes)),
        ("Backing volume", or_dash(volume.backing_volume.as_deref())),
        ("Backing chain", list_or_dash(&volume.backing_chain, " <- ")),
        ("Used by", list_or_dash(&volume.used_by, ", ")),
    ])
}
