//! The `vessel` command-line client.
//!
//! Every command is a call to the daemon's REST API over its unix socket: [`Command`] is the
//! clap command tree (`vessel <noun> <verb>`), [`GlobalOpts`] the options every command takes,
//! and [`run`] carries a parsed command out and returns the process exit code. The `vessel`
//! binary joins this with `vessel daemon`.
//!
//! One folder (or file) a noun, holding its arguments, what it does and its tables: `vm/`,
//! `storage/` (pool, volume, image), `network/`, `access/` (user, token, project, audit),
//! `observe/` (event, host, top), `operation/`, `remote.rs`. They call the daemon through
//! [`client`] and print through `Context` (`context.rs`) and [`output`].
//!
//! Exit codes: 0 success; 1 an internal or unexpected error; 2 a usage error or an invalid
//! argument; 3 not found; 4 already exists or conflicting state; 5 the operation failed;
//! 6 timeout; 7 the daemon cannot be reached; 8 not signed in, or not allowed (401, 403, 429).

mod access;
mod args;
pub mod client;
mod context;
mod error;
mod files;
mod network;
mod observe;
mod operation;
pub mod output;
mod remote;
mod storage;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

pub use client::{tls, AuditQuery};
pub use client::{Client, ClientError, Outcome, Unreachable, VmAction, DEFAULT_SOCKET};
pub(crate) use context::Context;
pub use error::CliError;
pub use observe::event::EventCommand;
pub use observe::host::HostCommand;
pub use operation::OperationCommand;
pub use output::OutputFormat;
pub use storage::pool::PoolCommand;
pub use storage::volume::VolumeCommand;
pub use vm::console;
pub use vm::{CreateArgs, EditArgs, VmCommand};

/// The client commands of `vessel`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create, inspect, start, stop and delete virtual machines.
    ///
    /// A VM has a desired state (what you asked for) and an observed state (what the daemon
    /// sees QEMU doing). Commands that change a VM wait until the daemon has carried the change
    /// out, unless given --no-wait.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Follow the work the daemon does for requests.
    ///
    /// Every change to a VM is recorded as an operation, with its status and, when it failed,
    /// why. Commands given --no-wait print the id of their operation.
    #[command(subcommand, visible_alias = "op")]
    Operation(OperationCommand),
    /// Manage storage pools, where VM volumes live.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Manage volumes: disk images in a pool.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Import and manage images, the read-only disks VMs are created from.
    #[command(subcommand)]
    Image(storage::image::ImageCommand),
    /// Create and manage networks: user-mode NAT, host bridges, managed bridges with DHCP and
    /// NAT, VXLAN overlays between servers; ingress rules.
    #[command(subcommand, visible_alias = "net")]
    Network(network::NetworkCommand),
    /// See what happened to VMs: starts, stops, crashes, restarts, re-adoptions.
    #[command(subcommand)]
    Event(EventCommand),
    /// Same as `vessel event list`: recorded events, or with --follow a live stream.
    Events(observe::event::EventListArgs),
    /// A live view of the VMs, sorted by CPU, memory, disk or network use, like top(1).
    ///
    /// Shows the host (CPU, memory, load, committed vCPUs and memory against what it has) and
    /// one line per VM: CPU in percent of one core, resident and configured memory, disk and
    /// network throughput over the last interval. The daemon samples every 5 s (its
    /// `sample_interval_secs`); refreshing faster shows the same sample again. Ctrl-C quits.
    #[command(
        after_help = "Examples:\n  vessel top\n  vessel top --sort memory\n  vessel top --once -o json"
    )]
    Top(observe::stats::TopArgs),
    /// Inspect the host the daemon runs on.
    #[command(subcommand)]
    Host(HostCommand),
    /// Daemons reached over TLS: trust, sign in, choose which one commands go to.
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Users and their roles in projects (admin, operator, viewer).
    #[command(subcommand)]
    User(access::UserCommand),
    /// API tokens for the remote API: shown once, stored as a digest, with expiry and scope.
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Projects: every VM belongs to one; quotas on VMs, vCPUs, memory, disk, networks.
    #[command(subcommand)]
    Project(access::ProjectCommand),
    /// The tamper-evident audit log: list records, verify the chain (also offline).
    #[command(subcommand)]
    Audit(access::AuditCommand),
}

/// Options every client command takes.
// `about = None`: when flattened, the struct's doc comment must not become the parent
// command's description.
#[derive(Debug, Clone, clap::Args)]
#[command(about = None, long_about = None)]
pub struct GlobalOpts {
    /// Unix socket of the Vessel daemon to talk to.
    ///
    /// The daemon listens on /run/vessel/vessel.sock unless it was started with another
    /// --socket. The socket is only open to root and its group.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH",
        env = "VESSEL_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// How to print results.
    ///
    /// `table` prints tables and short messages for people; `json` prints the API's JSON
    /// response, pretty-printed, for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        help_heading = "Global options",
        value_name = "FORMAT",
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,
    /// Talk to this remote (see `vessel remote list`) instead of the unix socket.
    ///
    /// Without it, commands go to the remote chosen with `vessel remote switch`, unless
    /// --socket (or VESSEL_SOCKET) names a socket.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "NAME",
        env = "VESSEL_REMOTE"
    )]
    pub remote: Option<String>,
}

impl Default for GlobalOpts {
    fn default() -> Self {
        GlobalOpts {
            socket: PathBuf::from(DEFAULT_SOCKET),
            output: OutputFormat::Table,
            remote: None,
        }
    }
}

/// The daemon commands go to: --remote, else an explicit --socket, else the current remote,
/// else the default socket.
fn choose_client(global: &GlobalOpts) -> Result<Client, CliError> {
    if let Some(name) = &global.remote {
        return remote::client_for(name);
    }
    if global.socket.as_os_str() != DEFAULT_SOCKET {
        return Ok(Client::new(global.socket.clone()));
    }
    match remote::current()? {
        Some(name) => remote::client_for(&name),
        None => Ok(Client::new(global.socket.clone())),
    }
}

/// Carries out one client command and returns the exit code. Errors are printed to stderr as
/// `error: ...` and `hint: ...`.
pub async fn run(command: Command, global: GlobalOpts) -> ExitCode {
    let client = match &command {
        // Managing remotes needs no daemon (and must work when the current one is broken).
        Command::Remote(_) => Ok(Client::new(global.socket.clone())),
        _ => choose_client(&global),
    };
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            err.report();
            return error::exit_code(err.exit_code());
        }
    };
    let ctx = Context {
        client,
        output: global.output,
    };
    let result = match command {
        Command::Vm(command) => vm::run(command, &ctx).await,
        Command::Operation(command) => operation::run(command, &ctx).await,
        Command::Pool(command) => storage::pool::run(command, &ctx).await,
        Command::Volume(command) => storage::volume::run(command, &ctx).await,
        Command::Image(command) => storage::image::run(command, &ctx).await,
        Command::Network(command) => network::run(command, &ctx).await,
        Command::Event(command) => observe::event::run(command, &ctx).await,
        Command::Top(args) => observe::stats::top(&ctx, &args).await,
        Command::Events(args) => observe::event::run(EventCommand::List(args), &ctx).await,
        Command::Host(command) => observe::host::run(command, &ctx).await,
        Command::Remote(command) => remote::run(command, &ctx).await,
        Command::User(command) => access::run_user(command, &ctx).await,
        Command::Token(command) => access::run_token(command, &ctx).await,
        Command::Project(command) => access::run_project(command, &ctx).await,
        Command::Audit(command) => access::run_audit(command, &ctx).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            err.report();
            error::exit_code(err.exit_code())
        }
    }
}
