//! The Vessel host daemon: the composition root. It wires the store, the QEMU backend, the
//! reconciler and the HTTP API together and serves the API on a unix socket.

mod access;
mod api;
mod common;
mod config;
mod ctx;
mod host_identity;
mod lock;
mod migrate;
mod network;
mod observe;
mod storage;
mod vm;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use vessel_api::{ApiError, Usage};
use vessel_core::HostCapacity;
use vessel_qemu::{Accel, AccelChoice, QemuBackend};
use vessel_store::{SqliteStore, Store};

use crate::common::quota::{Counter, Holdings};

pub use api::openapi_json;
pub use config::{Config, DaemonArgs};
pub use vm::console_http::CONSOLE_PROTOCOL;

use crate::ctx::Ctx;
use crate::ctx::Service;
use crate::lock::DataDirLock;
use crate::vm::controller::Controller;

/// Runs the daemon until `shutdown` resolves. VMs keep running after the daemon exits; the next
/// daemon re-adopts them.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    access::file_modes::private_umask();
    raise_fd_limit();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    let mut config = config;
    let requested = Some(config.host_name.as_str()).filter(|name| !name.is_empty());
    config.host_name = host_identity::resolve(&config.data_dir, requested)?;
    let fixed = access::file_modes::secure_data_dir(&config.data_dir)?;
    if fixed > 0 {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            fixed,
            "the data dir or files below it were readable by group or others; made them private"
        );
    }
    let store = SqliteStore::open(&config.data_dir.join("vessel.db"))
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    // Before anything reads the keys it moves.
    migrate::to_host_keys(&store, &config.host_name).await?;
    let accel = choose_accelerator(&config.accelerator);
    if accel.accel == Accel::Tcg {
        tracing::warn!("accelerator: tcg: {}", accel.reason);
    }
    let qemu_binary = config.qemu_binary.clone();
    let qemu_version =
        tokio::task::spawn_blocking(move || vessel_qemu::host::qemu_version(&qemu_binary)).await?;
    let qemu_version = qemu_version.unwrap_or_else(|| {
        tracing::warn!(
            "{} not found: VMs cannot start until QEMU is installed",
            config.qemu_binary
        );
        "not installed".into()
    });
    // Only root can start QEMU as another user; an unprivileged daemon's QEMUs run as itself.
    let qemu_uids = config.qemu_uids.filter(|_| network::host::euid() == 0);
    match qemu_uids {
        Some(range) => tracing::info!(
            "each VM's QEMU runs as its own user: uids from {} on",
            range.base()
        ),
        None => tracing::info!("QEMU runs as the daemon's user (qemu_uid_base = 0, or not root)"),
    }
    let backend = Arc::new(QemuBackend::new(config.qemu_binary.clone()).with_uid_range(qemu_uids));
    let ctx = Arc::new(
        Ctx::new(
            Arc::new(store),
            backend,
            accel,
            config.clone(),
            host_capacity(),
            qemu_version,
            storage::keys::load_keyring(&config.data_dir)?,
        )
        .await?,
    );
    storage::pools::ensure_default_pool(&ctx).await?;
    storage::pools::warn_open_pools(&ctx).await;
    access::projects::count_with(quota_counters());
    access::projects::ensure_default(&ctx).await?;
    // Before any request: the disk quota counts these entries.
    storage::ownership::reconcile(&ctx).await?;
    vm::snapshot_quota::reconcile(&ctx).await?;
    let security = access::security::open(Arc::clone(&ctx), &config).await?;
    // Bridges and the firewall first: re-adopted VMs' taps go back onto their bridges.
    ctx.net.startup(&ctx).await;
    Controller::new(Arc::clone(&ctx)).start().await?;
    tokio::spawn(observe::sampler::run(
        Arc::clone(&ctx),
        std::time::Duration::from_secs(config.sample_interval_secs),
    ));
    let listener = bind_socket(&config.socket)?;
    if let Some(group) = &config.socket_group {
        access::security::set_socket_group(&config.socket, group)?;
    }
    let remote = access::security::bind_remote(&config, &security).await?;
    tracing::info!(socket = %config.socket.display(), data_dir = %config.data_dir.display(), "vessel daemon ready");
    let app = access::security::app(api::router(Service { ctx }), Arc::clone(&security));
    serve(listener, remote, app, shutdown).await;
    security.close().await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Serves until shutdown, then gives open connections (console followers never end on their own)
/// a moment to finish.
async fn serve(
    listener: tokio::net::UnixListener,
    remote: Option<access::security::Remote>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut rx2 = rx.clone();
    if let Some(remote) = remote {
        tokio::spawn(access::tls::serve(
            remote.listener,
            remote.config,
            router.clone(),
            remote.limits,
            rx.clone(),
        ));
    }
    let router = router.layer(axum::Extension(access::tls::Peer::Unix));
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let graceful = axum::serve(listener, router).with_graceful_shutdown(async move {
        let mut rx = rx;
        let _ = rx.wait_for(|stop| *stop).await;
    });
    let deadline = async move {
        let _ = rx2.wait_for(|stop| *stop).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        result = graceful => if let Err(e) = result { tracing::error!(error = %e, "API server failed") },
        _ = deadline => tracing::info!("closing remaining API connections"),
    }
}

/// How each feature counts what a project holds, for the quota check (see `common/quota.rs`).
fn quota_counters() -> Vec<Counter> {
    /// A counter from the body of an async fn of `store` and `project`.
    macro_rules! counter {
        (|$store:ident, $project:ident| $body:expr) => {{
            fn count<'a>(
                $store: &'a dyn Store,
                $project: &'a str,
            ) -> BoxFuture<'a, Result<Holdings, ApiError>> {
                Box::pin(async move { $body })
            }
            count as Counter
        }};
    }
    vec![
        counter!(|store, project| {
            let usage = vm::model::project_usage(store, project).await?;
            Ok(Holdings::of(usage))
        }),
        counter!(|store, project| {
            let networks = network::service::project_networks(store, project).await?;
            Ok(Holdings::of(Usage {
                networks,
                ..Usage::default()
            }))
        }),
        // Volumes: VMs' root disks, data volumes, clones, imports, images, and those being made.
        counter!(|store, project| {
            let (disk_bytes, volumes) = storage::ownership::project_disk(store, project).await?;
            let usage = Usage {
                disk_bytes,
                ..Usage::default()
            };
            Ok(Holdings { usage, volumes })
        }),
        // What the VMs' snapshots take inside their disks (memory state included).
        counter!(|store, project| {
            let disk_bytes = vm::snapshot_quota::project_bytes(store, project).await?;
            Ok(Holdings::of(Usage {
                disk_bytes,
                ..Usage::default()
            }))
        }),
    ]
}

/// Raises the soft limit of open files to the hard one (at most 65536): the TLS listener may
/// hold about a thousand connections (`limits.rs`), besides every VM's sockets and disks.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = limit.rlim_max.min(65_536);
            if limit.rlim_cur < wanted {
                limit.rlim_cur = wanted;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

fn choose_accelerator(setting: &str) -> AccelChoice {
    match setting {
        "kvm" => AccelChoice {
            accel: Accel::Kvm,
            reason: "forced by configuration".into(),
        },
        "tcg" => AccelChoice {
            accel: Accel::Tcg,
            reason: "forced by configuration".into(),
        },
        _ => vessel_qemu::detect_accelerator(),
    }
}

/// What the host offers a single VM: online CPUs and total memory.
fn host_capacity() -> HostCapacity {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(1024);
    HostCapacity { cpus, memory_mib }
}

/// Binds the API socket (0660), refusing to steal one that another daemon serves.
fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|dir| !dir.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
        // Explicitly, past the umask: members of socket_group must reach the socket.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "socket {} is served by another daemon; stop it or use --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}
