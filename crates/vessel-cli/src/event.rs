//! `vessel event ...`

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::output;
use crate::{CliError, Context};

/// `vessel event <verb>`
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// List what happened to VMs, oldest first: starts, stops, crashes with their reason,
    /// restarts under the restart policy, re-adoption after a daemon restart.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  vessel event list\n  vessel event list --vm web1 --limit 20\n  vessel event list -o json"
    )]
    List(EventListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EventListArgs {
    /// Only this VM's events.
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// How many of the newest events to show (1 to 2000).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=2000))]
    pub limit: u64,
}

pub(crate) async fn run(command: EventCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        EventCommand::List(args) => {
            let events = ctx
                .client
                .list_events(args.vm.as_deref(), args.limit as usize)
                .await?;
            ctx.show(&events, |events| {
                output::event_table(events, output::now_ms())
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
