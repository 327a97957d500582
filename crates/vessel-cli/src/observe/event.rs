//! `vessel event ...`

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::EventKind;

use crate::output::{escape, finish, format_time, format_utc, now_ms, plain_table};
use crate::{CliError, Context};
use vessel_api::Event;

/// `vessel event <verb>`
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// List what happened to VMs, oldest first: starts, stops, crashes with their reason,
    /// restarts under the restart policy, re-adoption after a daemon restart.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  vessel event list\n  vessel event list --vm web1 --limit 20\n  vessel event list --follow --type state,alert\n  vessel events -f -o json        # one JSON object per line"
    )]
    List(EventListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EventListArgs {
    /// Only this VM's events.
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// Only events of these kinds (comma-separated): info, state, operation, alert. The list
    /// holds recorded events (info, alert); state and operation events are only streamed
    /// (--follow).
    #[arg(long = "type", value_name = "KINDS", value_delimiter = ',', value_parser = kind_parser())]
    pub kinds: Vec<EventKind>,
    /// Keep printing events as they happen (state changes, operations, alerts), until Ctrl-C.
    /// A client that falls too far behind is told how many events it missed.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// How many of the newest events to show (1 to 2000).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=2000))]
    pub limit: u64,
}

fn kind_parser() -> impl clap::builder::TypedValueParser<Value = EventKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["info", "state", "operation", "alert"]).map(|v| {
        match v.as_str() {
            "state" => EventKind::State,
            "operation" => EventKind::Operation,
            "alert" => EventKind::Alert,
            _ => EventKind::Info,
        }
    })
}

/// Prints events as they come until the stream ends or Ctrl-C.
async fn follow(ctx: &Context, args: &EventListArgs) -> Result<(), CliError> {
    let mut stream = ctx
        .client
        .follow_events(args.vm.as_deref(), &args.kinds)
        .await?;
    loop {
        let next = tokio::select! {
            next = stream.next() => next?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = next else { return Ok(()) };
        match ctx.output {
            crate::OutputFormat::Json => ctx.print(&format!(
                "{}\n",
                serde_json::to_string(&event).expect("events serialize")
            ))?,
            crate::OutputFormat::Table => ctx.print(&event_line(&event))?,
        }
    }
}

pub(crate) async fn run(command: EventCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        EventCommand::List(args) if args.follow => follow(ctx, &args).await?,
        EventCommand::List(args) => {
            let events = ctx
                .client
                .list_events_of(args.vm.as_deref(), &args.kinds, args.limit as usize)
                .await?;
            ctx.show(&events, |events| event_table(events, now_ms()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vessel event list`.
pub fn event_table(events: &[Event], now_ms: u64) -> String {
    let mut table = plain_table(Some(&["TIME", "VM", "EVENT"]));
    for event in events {
        table.add_row(vec![
            format_time(event.at_ms, now_ms),
            event.vm.clone(),
            event.message.clone(),
        ]);
    }
    finish(table)
}

/// One event as a line of `vessel event list --follow`.
pub fn event_line(event: &Event) -> String {
    let vm = if event.vm.is_empty() { "-" } else { &event.vm };
    format!(
        "{}  {:<9} {:<16} {}\n",
        format_utc(event.at_ms),
        event.kind.as_str(),
        escape(vm),
        escape(&event.message)
    )
}
