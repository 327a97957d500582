//! `vessel pool ...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{CreatePoolRequest, Pool};

use crate::output::{finish, format_bytes, format_time, key_values, now_ms, plain_table};
use crate::{CliError, Context};

/// `vessel pool <verb>`
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List storage pools with their size, use and number of volumes.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  vessel pool list\n  vessel pool list -o json"
    )]
    List,
    /// Show one pool.
    Show(PoolNameArgs),
    /// Add a directory pool. The directory is created if missing; an existing one is taken over
    /// with the volumes it holds. Pools must not nest, nor overlap the daemon's data dir.
    #[command(after_help = "Examples:\n  vessel pool create fast --path /srv/nvme/vessel")]
    Create(PoolCreateArgs),
    /// Remove a pool that holds no volumes. Its directory is removed when it is empty. The
    /// `default` pool stays.
    #[command(visible_alias = "rm")]
    Delete(PoolNameArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PoolNameArgs {
    /// Name of the pool.
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct PoolCreateArgs {
    /// Name of the new pool (letters, digits, '-', '_', '.').
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Directory that holds the pool's volumes (made absolute against the current directory).
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,
}

pub(crate) async fn run(command: PoolCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        PoolCommand::List => {
            let pools = ctx.client.list_pools().await?;
            ctx.show(&pools, |pools| pool_table(pools))?;
        }
        PoolCommand::Show(args) => {
            let pool = ctx.client.get_pool(&args.name).await?;
            ctx.show(&pool, |pool| pool_details(pool, now_ms()))?;
        }
        PoolCommand::Create(args) => {
            let path = std::path::absolute(&args.path)
                .map_err(|e| CliError::io("cannot make the pool path absolute", e))?;
            let request = CreatePoolRequest {
                name: args.name,
                kind: Default::default(),
                path: path.to_string_lossy().into_owned(),
            };
            let pool = ctx.client.create_pool(&request).await?;
            ctx.show(&pool, |pool| {
                format!("pool {} created at {}\n", pool.name, pool.path)
            })?;
        }
        PoolCommand::Delete(args) => {
            ctx.client.delete_pool(&args.name).await?;
            ctx.print(&format!("pool {} deleted\n", args.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel pool list`.
pub fn pool_table(pools: &[Pool]) -> String {
    let mut table = plain_table(Some(&[
        "NAME",
        "KIND",
        "PATH",
        "SIZE",
        "USED",
        "AVAILABLE",
        "VOLUMES",
    ]));
    for pool in pools {
        table.add_row(vec![
            pool.name.clone(),
            pool.kind.as_str().to_string(),
            pool.path.clone(),
            format_bytes(pool.total_bytes),
            format_bytes(pool.used_bytes),
            format_bytes(pool.available_bytes),
            pool.volumes.to_string(),
        ]);
    }
    finish(table)
}

/// `vessel pool show`.
pub fn pool_details(pool: &Pool, now_ms: u64) -> String {
    key_values(vec![
        ("Name", pool.name.clone()),
        ("Kind", pool.kind.as_str().to_string()),
        ("Path", pool.path.clone()),
        ("Size", format_bytes(pool.total_bytes)),
        ("Used", format_bytes(pool.used_bytes)),
        ("Available", format_bytes(pool.available_bytes)),
        ("Volumes", pool.volumes.to_string()),
        ("Created", format_time(pool.created_at_ms, now_ms)),
    ])
}
