//! `vessel operation ...`

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::output;
use crate::{CliError, Context};

/// `vessel operation <verb>`
#[derive(Debug, Subcommand)]
pub enum OperationCommand {
    /// List the operations the daemon keeps.
    ///
    /// Columns: ID; VM; ACTION (create, start, stop, kill, reboot, pause, resume, edit,
    /// delete, or restart when the daemon restarted a VM under its restart policy); STATUS
    /// (pending, running, succeeded, failed); CREATED; ERROR, why a failed operation failed.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  vessel operation list\n  vessel operation list -o json | jq '.[] | select(.status == \"failed\")'"
    )]
    List,
    /// Show one operation: what it does, its status, when it started and finished, and why
    /// it failed.
    #[command(
        after_help = "Examples:\n  vessel vm start web1 --no-wait   # prints: operation <ID> started\n  vessel operation show <ID>"
    )]
    Show(OperationIdArgs),
    /// Cancel a running import, export or full clone.
    ///
    /// The daemon stops the work and removes what it had made so far; the operation ends as
    /// `cancelled`. Other operations (start, stop...) cannot be cancelled.
    #[command(
        after_help = "Examples:\n  vessel image import big /srv/big.qcow2 --no-wait\n  vessel operation cancel <ID>"
    )]
    Cancel(OperationIdArgs),
}

/// An operation id.
#[derive(Debug, Clone, Args)]
pub struct OperationIdArgs {
    /// Id of the operation, as printed by commands given --no-wait or by `vessel operation
    /// list`.
    #[arg(value_name = "ID")]
    pub id: String,
}

pub(crate) async fn run(command: OperationCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        OperationCommand::List => {
            let operations = ctx.client.list_operations().await?;
            ctx.show(&operations, |ops| {
                output::operation_table(ops, output::now_ms())
            })?;
        }
        OperationCommand::Cancel(args) => {
            let operation = ctx.client.cancel_operation(&args.id).await?;
            ctx.show(&operation, |op| {
                format!("operation {} {}\n", op.id, op.status.as_str())
            })?;
        }
        OperationCommand::Show(args) => {
            let operation = ctx.client.get_operation(&args.id).await?;
            ctx.show(&operation, |op| {
                output::operation_details(op, output::now_ms())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
