//! `vessel operation ...`: the command, its tables, and (`wait.rs`) how commands wait for a long
//! operation.

pub mod wait;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::output::{
    finish, format_age, format_duration_ms, format_time, key_values, now_ms, or_dash, plain_table,
    yes_no,
};
use crate::{CliError, Context};
use vessel_api::{Operation, OperationStatus};

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
            ctx.show(&operations, |ops| operation_table(ops, now_ms()))?;
        }
        OperationCommand::Cancel(args) => {
            let operation = ctx.client.cancel_operation(&args.id).await?;
            ctx.show(&operation, |op| {
                format!("operation {} {}\n", op.id, op.status.as_str())
            })?;
        }
        OperationCommand::Show(args) => {
            let operation = ctx.client.get_operation(&args.id).await?;
            ctx.show(&operation, |op| operation_details(op, now_ms()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel operation list`.
pub fn operation_table(operations: &[Operation], now_ms: u64) -> String {
    let mut table = plain_table(Some(&["ID", "VM", "ACTION", "STATUS", "CREATED", "ERROR"]));
    for op in operations {
        table.add_row(vec![
            op.id.clone(),
            op.vm.clone(),
            op.action.as_str().to_string(),
            status_name(op.status).to_string(),
            format_age(op.created_at_ms, now_ms),
            or_dash(op.error.as_deref()),
        ]);
    }
    finish(table)
}

/// `vessel operation show`.
pub fn operation_details(op: &Operation, now_ms: u64) -> String {
    let mut rows = vec![
        ("ID", op.id.clone()),
        ("VM", op.vm.clone()),
        ("Action", op.action.as_str().to_string()),
        ("Status", status_name(op.status).to_string()),
        ("Force", yes_no(op.force)),
    ];
    if let Some(timeout) = op.timeout_secs {
        rows.push(("Timeout", format!("{timeout}s")));
    }
    rows.push(("Created", format_time(op.created_at_ms, now_ms)));
    match op.finished_at_ms {
        Some(finished) => {
            rows.push(("Finished", format_time(finished, now_ms)));
            rows.push((
                "Duration",
                format_duration_ms(finished.saturating_sub(op.created_at_ms)),
            ));
        }
        None => rows.push(("Finished", "-".into())),
    }
    rows.push(("Error", or_dash(op.error.as_deref())));
    key_values(rows)
}

pub fn status_name(status: OperationStatus) -> &'static str {
    status.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::{OperationAction, OperationStatus};

    #[test]
    fn operations_table_shows_status_and_error() {
        let op = Operation {
            id: "op-1".into(),
            vm: "web1".into(),
            resource: None,
            project: "default".into(),
            progress: None,
            result: None,
            action: OperationAction::Start,
            status: OperationStatus::Failed,
            error: Some("kernel not found".into()),
            error_code: None,
            force: false,
            timeout_secs: None,
            created_at_ms: 1_000_000,
            finished_at_ms: Some(1_002_400),
        };
        let text = operation_table(std::slice::from_ref(&op), 1_061_000);
        assert!(text.starts_with("ID"), "{text}");
        assert!(text.contains("failed"), "{text}");
        assert!(text.contains("1m ago"), "{text}");
        assert!(text.contains("kernel not found"), "{text}");
        let details = operation_details(&op, 1_061_000);
        assert!(details.contains("2.4s"), "{details}");
    }
}
