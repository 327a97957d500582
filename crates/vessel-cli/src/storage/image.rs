//! `vessel image ...`

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{Image, ImageKind, ImportImageRequest};

use crate::args::{source_arg, WaitArgs};
use crate::operation::wait::follow_outcome;
use crate::output::{finish, format_bytes, key_values, list_or_dash, plain_table, yes_no};
use crate::{CliError, Context};

/// `vessel image <verb>`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a disk image from a file or an http(s) URL.
    ///
    /// The daemon reads the source (a path on the daemon's host, or a URL it downloads),
    /// checks the SHA-256 if --sha256 is given, detects the format (qcow2 or raw), checks the
    /// image (qcow2 images must be self-contained and consistent), and keeps it read-only in
    /// the pool. A progress bar shows how far it has got; Ctrl-C cancels the import, and a
    /// cancelled or failed import leaves nothing behind.
    ///
    /// VMs are made from images with `vessel vm create NAME --image IMAGE`.
    #[command(
        after_help = "Examples:\n  vessel image import debian12 /srv/images/debian-12-generic-amd64.qcow2\n  vessel image import debian12 https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-generic-amd64.qcow2 \\\n      --sha256 <digest from SHA512SUMS' sibling or your own sha256sum>"
    )]
    Import(ImportArgs),
    /// List images with their size and how many linked clones use them.
    #[command(visible_alias = "ls")]
    List,
    /// Show one image: its format, size, digest, source and linked clones.
    Show(ImageNameArgs),
    /// Delete an image. Refused while volumes are linked clones of it (they are named).
    #[command(visible_alias = "rm")]
    Delete(ImageNameArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ImageNameArgs {
    /// Name of the image.
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Name for the image: letters, digits, '-', '_' and '.'.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// A file on the daemon's host (made absolute against the current directory) or an
    /// http:// or https:// URL.
    #[arg(value_name = "FILE|URL")]
    pub source: String,
    /// The SHA-256 the source must have, as `sha256sum` prints it.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The pool to keep the image in.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// The project the image belongs to [default: default].
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    /// What the image holds: a disk (VMs are made from it), or a kernel or initrd VMs boot
    /// with (`vessel vm create --kernel-image K --initrd-image I`), kept as the bytes given.
    #[arg(long, value_name = "KIND", default_value = "disk", value_parser = kind_parser())]
    pub kind: ImageKind,
    /// Every project may see and use the image (host admins only).
    #[arg(long)]
    pub public: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn kind_parser() -> impl clap::builder::TypedValueParser<Value = ImageKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["disk", "kernel", "initrd"]).map(|value| match value
        .as_str()
    {
        "kernel" => ImageKind::Kernel,
        "initrd" => ImageKind::Initrd,
        _ => ImageKind::Disk,
    })
}

pub(crate) async fn run(command: ImageCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    let client = &ctx.client;
    match command {
        ImageCommand::Import(args) => {
            let request = ImportImageRequest {
                name: args.name.clone(),
                source: source_arg(&args.source)?,
                sha256: args.sha256,
                pool: args.pool,
                project: args.project,
                kind: args.kind,
                public: args.public,
            };
            let outcome = client.import_image(&request, false).await?;
            let what = format!("importing {}", args.name);
            if let Some(image) = follow_outcome(ctx, outcome, args.wait.no_wait, &what).await? {
                ctx.show(&image, |i: &Image| {
                    format!(
                        "image {} imported ({} {}, sha256 {})\n",
                        i.name,
                        i.format.as_str(),
                        format_bytes(i.virtual_bytes),
                        i.sha256
                    )
                })?;
            }
        }
        ImageCommand::List => {
            let images = client.list_images().await?;
            ctx.show(&images, |i| image_table(i))?;
        }
        ImageCommand::Show(args) => {
            let image = client.get_image(&args.name).await?;
            ctx.show(&image, image_details)?;
        }
        ImageCommand::Delete(args) => {
            client.delete_image(&args.name).await?;
            ctx.print(&format!("image {} deleted\n", args.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel image list`.
pub fn image_table(images: &[Image]) -> String {
    let mut table = plain_table(Some(&[
        "NAME",
        "POOL",
        "KIND",
        "PUBLIC",
        "FORMAT",
        "SIZE",
        "ALLOCATED",
        "CLONES",
        "SHA256",
    ]));
    for image in images {
        table.add_row(vec![
            image.name.clone(),
            image.pool.clone(),
            image.kind.as_str().to_string(),
            yes_no(image.public),
            image.format.as_str().to_string(),
            format_bytes(image.virtual_bytes),
            format_bytes(image.allocated_bytes),
            image.dependents.len().to_string(),
            image.sha256.chars().take(12).collect(),
        ]);
    }
    finish(table)
}

/// `vessel image show`.
pub fn image_details(image: &Image) -> String {
    key_values(vec![
        ("Name", image.name.clone()),
        ("Pool", image.pool.clone()),
        ("Project", image.project.clone()),
        ("Kind", image.kind.as_str().to_string()),
        ("Public", yes_no(image.public)),
        ("Format", image.format.as_str().to_string()),
        ("Virtual size", format_bytes(image.virtual_bytes)),
        ("Allocated", format_bytes(image.allocated_bytes)),
        ("SHA-256", image.sha256.clone()),
        ("Source", image.source.clone()),
        ("Linked clones", list_or_dash(&image.dependents, ", ")),
    ])
}
