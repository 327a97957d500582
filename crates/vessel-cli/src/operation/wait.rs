//! Waiting for a long operation (import, export, full clone) with a progress bar, and Ctrl-C
//! cancelling it on the daemon.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vessel_api::{Operation, OperationStatus};

use crate::client::Outcome;
use crate::{CliError, Context, OutputFormat};

/// How often the operation is polled while the bar runs.
const POLL: Duration = Duration::from_millis(250);

/// Follows `op` until it ends: a bar on a terminal (nothing otherwise). Ctrl-C asks the daemon
/// to cancel it. Returns the finished operation; a failed or cancelled one is an error.
pub async fn follow(ctx: &Context, op: Operation, what: &str) -> Result<Operation, CliError> {
    let bar = (ctx.output == OutputFormat::Table && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% {elapsed_precise}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    });
    let mut current = op;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while !current.status.is_terminal() {
        tokio::select! {
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                if let Some(bar) = &bar {
                    bar.set_message(format!("{what} (cancelling)"));
                }
                // The answer is the cancelled operation; the loop sees it on the next poll.
                let _ = ctx.client.cancel_operation(&current.id).await;
            }
            () = tokio::time::sleep(POLL) => {}
        }
        current = ctx.client.get_operation(&current.id).await?;
        if let (Some(bar), Some(percent)) = (&bar, current.progress) {
            bar.set_position((percent * 10.0) as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match current.status {
        OperationStatus::Succeeded => Ok(current),
        OperationStatus::Cancelled => Err(CliError::Cancelled { id: current.id }),
        _ => Err(failed(current, Some(what))),
    }
}

/// The error for an operation that failed: why (its error, after `what` when given), its class.
pub(crate) fn failed(op: Operation, what: Option<&str>) -> CliError {
    let reason = op.error.clone().unwrap_or_else(|| "no reason given".into());
    CliError::OperationFailed {
        code: op.error_code(),
        message: match what {
            Some(what) => format!("{what}: {reason}"),
            None => reason,
        },
        id: op.id,
    }
}

/// What came of a long operation started with `wait=false`: `None` with --no-wait (its id is
/// printed), otherwise its result once it finished, followed with [`follow`].
pub(crate) async fn follow_outcome<T: Serialize + DeserializeOwned>(
    ctx: &Context,
    outcome: Outcome<T>,
    no_wait: bool,
    what: &str,
) -> Result<Option<T>, CliError> {
    match outcome {
        Outcome::Accepted(accepted) if no_wait => {
            ctx.show_accepted(&accepted)?;
            Ok(None)
        }
        Outcome::Accepted(accepted) => {
            let done = follow(ctx, accepted.operation, what).await?;
            result_of(done).map(Some)
        }
        // The daemon answers `wait=false` with 202; a finished result is the result all the same.
        Outcome::Done(value) => Ok(Some(value)),
    }
}

/// The result a finished host operation (import, export, copy) recorded.
fn result_of<T: DeserializeOwned>(op: Operation) -> Result<T, CliError> {
    serde_json::from_value(op.result.unwrap_or_default())
        .map_err(|e| CliError::usage(format!("the daemon's answer is not understood: {e}"), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::{ErrorCode, OperationAction};

    fn failed_op(error: Option<&str>, code: Option<ErrorCode>) -> Operation {
        Operation {
            id: "op-7".into(),
            vm: String::new(),
            resource: Some("volume/default/data1".into()),
            project: "default".into(),
            progress: Some(40.0),
            result: None,
            action: OperationAction::Start,
            status: OperationStatus::Failed,
            error: error.map(str::to_string),
            error_code: code,
            force: false,
            timeout_secs: None,
            created_at_ms: 1,
            finished_at_ms: Some(2),
        }
    }

    #[test]
    fn a_failed_operation_keeps_its_reason_and_its_class() {
        let quota = failed_op(Some("quota exceeded"), Some(ErrorCode::QuotaExceeded));
        let err = failed(quota, Some("copying data1"));
        assert_eq!(
            err.to_string(),
            "operation op-7 failed: copying data1: quota exceeded"
        );
        assert_eq!(err.exit_code(), ErrorCode::QuotaExceeded.exit_code());

        let err = failed(failed_op(None, None), None);
        assert_eq!(err.to_string(), "operation op-7 failed: no reason given");
        assert_eq!(err.exit_code(), ErrorCode::OperationFailed.exit_code());
    }

    #[test]
    fn the_result_of_a_host_operation_is_read_from_its_record() {
        let mut op = failed_op(None, None);
        op.result = Some(serde_json::json!({"path": "/srv/x.qcow2"}));
        let value: serde_json::Value = result_of(op).unwrap();
        assert_eq!(value["path"], "/srv/x.qcow2");
        let err = result_of::<u32>(failed_op(None, None)).unwrap_err();
        assert!(err.to_string().contains("not understood"), "{err}");
    }
}
