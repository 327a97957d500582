//! `vessel`: `vessel daemon` runs the host daemon; every other subcommand is a client of its API.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vessel",
    version,
    about = "Run and manage virtual machines on this server",
    long_about = "Vessel turns Linux servers into virtualization hosts. `vessel daemon` runs the host \
daemon (QEMU VMs, an embedded database, a REST API on a unix socket); every other command is a \
client of that API.",
    after_help = "EXAMPLES:\n  vessel daemon &\n  vessel vm create web1 --memory 256M --kernel ./vmlinuz --initrd ./initrd.img --start\n  vessel vm list\n  vessel vm console web1"
)]
struct Cli {
    #[command(flatten)]
    global: vessel_cli::GlobalOpts,
    #[command(subcommand)]
    command: Top,
}

// Parsed once per process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Top {
    /// Run the host daemon (the API server, the reconciler, QEMU supervision)
    Daemon(vessel_daemon::DaemonArgs),
    #[command(flatten)]
    Client(vessel_cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Top::Daemon(mut args) => {
            // The global --socket (or VESSEL_SOCKET) wins over the config file unless it is
            // just the default.
            if cli.global.socket.as_os_str() != vessel_cli::DEFAULT_SOCKET {
                args.socket = Some(cli.global.socket.clone());
            }
            run_daemon(args)
        }
        Top::Client(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(vessel_cli::run(command, cli.global)),
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_daemon(args: vessel_daemon::DaemonArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VESSEL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match vessel_daemon::Config::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Two workers are plenty: the daemon mostly waits on QEMU and the store, and fewer threads
    // keep its resident memory small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vessel_daemon::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM. VMs keep running; the next daemon re-adopts them.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down; VMs keep running");
}
