//! Daemon configuration: built-in defaults, overridden by the TOML file, overridden by flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/vessel";
pub const DEFAULT_SOCKET: &str = "/run/vessel/vessel.sock";
pub const DEFAULT_CONFIG: &str = "/etc/vessel/vessel.toml";

/// `vessel daemon` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    after_help = "EXAMPLES:\n  vessel daemon\n  vessel --socket /tmp/vessel.sock daemon --data-dir /srv/vessel\n\nThe API socket is the global --socket option (default /run/vessel/vessel.sock, mode 0660).\nThe configuration file (TOML) takes the same settings as the flags, plus:\n  socket = \"/run/vessel/vessel.sock\"\n  accelerator = \"auto\"          # auto | kvm | tcg\n  qemu_binary = \"qemu-system-x86_64\"\n  console_log_bytes = 1048576   # per VM, before rotation\n  stop_timeout_secs = 30        # ACPI power-down wait before a forced stop\n  event_buffer = 1024           # events a slow stream subscriber may lag before missing some\n  sample_interval_secs = 5      # VM statistics sampling period\n  listen = \"0.0.0.0:8443\"      # the remote API over TLS (off unless set)\n  tls_names = [\"host.example\"] # extra names in the server certificate\n  socket_group = \"vessel\"       # who may use the unix socket besides root (as admin)\n  qemu_uid_base = 1879048192    # each VM's QEMU runs as its own uid from here on (0: as the daemon's user)\n  kernel_dirs = [\"/srv/kernels\"]  # project operators may boot kernels/initrds from here (else host admins only)\n  import_dirs = [\"/srv/images\"]   # ... import files from here\n  export_dirs = [\"/srv/exports\"]  # ... export volumes to new files here\n  import_allow_private = false  # URL imports of non-admins may reach private addresses\n  import_allow_cidrs = [\"10.1.0.0/16\"]  # ... or these networks only\n  audit_keep_days = 365         # prune older audit records (signed, verify still passes); default: keep all\n  audit_keep_records = 1000000  # and records beyond the newest this many\n  host_name = \"node1\"          # this host's name, fixed at the first start (default: the system hostname)"
)]
pub struct DaemonArgs {
    /// Where the database, VM run directories and console logs live [default: /var/lib/vessel].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The API's unix socket; set from the global `--socket` option (or VESSEL_SOCKET).
    #[arg(skip)]
    pub socket: Option<PathBuf>,
    /// TOML configuration file [default: /etc/vessel/vessel.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Accelerator: auto picks KVM only when it can really run guests, otherwise TCG.
    #[arg(long, value_parser = ["auto", "kvm", "tcg"])]
    pub accelerator: Option<String>,
    /// Also serve the API over TLS on this address (e.g. 0.0.0.0:8443); off by default.
    /// Remote callers sign in with a token or a client certificate.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// This host's name in the store (what its pools and volume keys are recorded under); fixed
    /// at the data dir's first start [default: the system hostname].
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,
}

/// The settings file. Unknown keys are an error: a typo must not be silently ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    accelerator: Option<String>,
    qemu_binary: Option<String>,
    console_log_bytes: Option<u64>,
    stop_timeout_secs: Option<u64>,
    event_buffer: Option<usize>,
    sample_interval_secs: Option<u64>,
    listen: Option<std::net::SocketAddr>,
    tls_names: Option<Vec<String>>,
    socket_group: Option<String>,
    qemu_uid_base: Option<u32>,
    audit_keep_days: Option<u64>,
    audit_keep_records: Option<u64>,
    kernel_dirs: Option<Vec<PathBuf>>,
    import_dirs: Option<Vec<PathBuf>>,
    export_dirs: Option<Vec<PathBuf>>,
    import_allow_private: Option<bool>,
    import_allow_cidrs: Option<Vec<String>>,
    host_name: Option<String>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub accelerator: String,
    pub qemu_binary: String,
    pub console_log_bytes: u64,
    pub stop_timeout_secs: u64,
    /// Events an event-stream subscriber may fall behind by before it misses some.
    pub event_buffer: usize,
    /// How often running VMs are sampled for `vm stats`, `top` and `/metrics`.
    pub sample_interval_secs: u64,
    /// The TLS listener's address, if the remote API is on.
    pub listen: Option<std::net::SocketAddr>,
    /// Extra DNS names or IP addresses for the server certificate.
    pub tls_names: Vec<String>,
    /// The group that may use the unix socket besides root (its members are the built-in
    /// `root` identity: admin of everything).
    pub socket_group: Option<String>,
    /// Each VM's QEMU runs as a user of its own: uid (and gid) `qemu_uid_base + slot`, slot the
    /// smallest one free (see `vessel_qemu::uid`). `None` (`qemu_uid_base = 0` in the file):
    /// QEMU runs as the daemon's user, for hosts where switching users cannot work. A daemon
    /// that is not root never switches.
    pub qemu_uids: Option<vessel_qemu::UidRange>,
    /// How much of the audit log to keep (pruned at start and hourly); keeps all by default.
    pub audit_retention: vessel_audit::Retention,
    /// Directories whose files project operators may name (see `host_paths`): kernels and
    /// initrds to boot, files to import, where exports go. Without them, only host admins
    /// (`host.files`) name host files. Canonical (symlinks resolved) at load.
    pub kernel_dirs: Vec<PathBuf>,
    pub import_dirs: Vec<PathBuf>,
    pub export_dirs: Vec<PathBuf>,
    /// Which addresses URL imports of callers without `host.files` may reach (public ones only
    /// by default).
    pub url_policy: vessel_storage::UrlPolicy,
    /// This host's name: the name asked for (empty: none, the system hostname is taken) until
    /// the daemon starts, then the one recorded in the data dir (see `host_identity`).
    pub host_name: String,
}

impl Config {
    /// Defaults for a data dir; tests use this directly.
    pub fn with_paths(data_dir: PathBuf, socket: PathBuf) -> Self {
        Config {
            data_dir,
            socket,
            accelerator: "auto".into(),
            qemu_binary: "qemu-system-x86_64".into(),
            console_log_bytes: 1024 * 1024,
            stop_timeout_secs: 30,
            event_buffer: 1024,
            sample_interval_secs: 5,
            listen: None,
            tls_names: Vec::new(),
            socket_group: None,
            qemu_uids: Some(
                vessel_qemu::UidRange::new(vessel_qemu::DEFAULT_UID_BASE)
                    .expect("the default range is valid"),
            ),
            audit_retention: vessel_audit::Retention::default(),
            kernel_dirs: Vec::new(),
            import_dirs: Vec::new(),
            export_dirs: Vec::new(),
            url_policy: vessel_storage::UrlPolicy::public_only(),
            host_name: String::new(),
        }
    }

    /// Merges defaults, the config file and the flags.
    pub fn load(args: &DaemonArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        let mut config = Config::with_paths(
            args.data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            args.socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        );
        if let Some(accel) = args.accelerator.clone().or(file.accelerator) {
            config.accelerator = accel;
        }
        if let Some(binary) = file.qemu_binary {
            config.qemu_binary = binary;
        }
        if let Some(bytes) = file.console_log_bytes {
            config.console_log_bytes = bytes.max(4096);
        }
        if let Some(secs) = file.stop_timeout_secs {
            config.stop_timeout_secs = secs;
        }
        if let Some(events) = file.event_buffer {
            config.event_buffer = events.clamp(1, 1 << 20);
        }
        if let Some(secs) = file.sample_interval_secs {
            config.sample_interval_secs = secs.clamp(1, 3600);
        }
        config.listen = args.listen.or(file.listen);
        config.tls_names = file.tls_names.unwrap_or_default();
        config.socket_group = file.socket_group;
        config.qemu_uids = match file.qemu_uid_base {
            None => config.qemu_uids,
            Some(0) => None,
            Some(base) => Some(
                vessel_qemu::UidRange::new(base)
                    .map_err(|e| anyhow::anyhow!("qemu_uid_base: {e}"))?,
            ),
        };
        if file.audit_keep_days == Some(0) || file.audit_keep_records == Some(0) {
            anyhow::bail!(
                "audit_keep_days and audit_keep_records must be at least 1 (leave them out to keep the whole audit log)"
            );
        }
        config.audit_retention = vessel_audit::Retention {
            keep_days: file.audit_keep_days,
            keep_records: file.audit_keep_records,
        };
        config.kernel_dirs = allowed_dirs("kernel_dirs", file.kernel_dirs)?;
        config.import_dirs = allowed_dirs("import_dirs", file.import_dirs)?;
        config.export_dirs = allowed_dirs("export_dirs", file.export_dirs)?;
        config.url_policy = vessel_storage::UrlPolicy::new(
            file.import_allow_private.unwrap_or(false),
            &file.import_allow_cidrs.unwrap_or_default(),
        )
        .map_err(|e| anyhow::anyhow!("import_allow_cidrs: {e}"))?;
        config.host_name = args
            .host_name
            .clone()
            .or(file.host_name)
            .unwrap_or_default();
        if !["auto", "kvm", "tcg"].contains(&config.accelerator.as_str()) {
            anyhow::bail!(
                "accelerator {:?} is not one of auto, kvm, tcg",
                config.accelerator
            );
        }
        Ok(config)
    }
}

/// An allow-listed directory setting: absolute, existing directories, kept canonical (a
/// symlinked setting is resolved once here, and files are then judged against the real place).
fn allowed_dirs(setting: &str, dirs: Option<Vec<PathBuf>>) -> anyhow::Result<Vec<PathBuf>> {
    dirs.unwrap_or_default()
        .into_iter()
        .map(|dir| {
            if !dir.is_absolute() {
                anyhow::bail!("{setting}: {} is not an absolute path", dir.display());
            }
            let real = std::fs::canonicalize(&dir)
                .map_err(|e| anyhow::anyhow!("{setting}: {}: {e}", dir.display()))?;
            if !real.is_dir() || real == Path::new("/") {
                anyhow::bail!(
                    "{setting}: {} is not a directory other than /",
                    dir.display()
                );
            }
            Ok(real)
        })
        .collect()
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {} is invalid: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vessel.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/a\"\nsocket = \"/srv/a.sock\"\nstop_timeout_secs = 5\n",
        )
        .unwrap();
        let args = DaemonArgs {
            config: Some(file),
            socket: Some("/x.sock".into()),
            ..Default::default()
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(config.socket, PathBuf::from("/x.sock"));
        assert_eq!(config.stop_timeout_secs, 5);
        assert_eq!(config.accelerator, "auto");
    }

    /// The configuration of a file holding `text`.
    fn load(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vessel.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(&DaemonArgs {
            config: Some(file),
            ..Default::default()
        })
    }

    #[test]
    fn qemu_uid_base_sets_the_range_and_zero_turns_separate_users_off() {
        let default = load("").unwrap();
        assert_eq!(
            default.qemu_uids.map(|r| r.base()),
            Some(vessel_qemu::DEFAULT_UID_BASE)
        );
        let custom = load("qemu_uid_base = 500000000\n").unwrap();
        assert_eq!(custom.qemu_uids.map(|r| r.base()), Some(500_000_000));
        assert!(load("qemu_uid_base = 0\n").unwrap().qemu_uids.is_none());
        let err = load("qemu_uid_base = 2147483000\n").unwrap_err();
        assert!(err.to_string().contains("2^31"), "{err}");
    }

    #[test]
    fn audit_retention_comes_from_the_file_and_zero_is_refused() {
        assert!(load("").unwrap().audit_retention.keeps_everything());
        let kept = load("audit_keep_days = 90\naudit_keep_records = 5000\n").unwrap();
        assert_eq!(kept.audit_retention.keep_days, Some(90));
        assert_eq!(kept.audit_retention.keep_records, Some(5000));
        let err = load("audit_keep_records = 0\n").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error() {
        let err = load("data_dri = \"/srv/a\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
