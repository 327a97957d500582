//! `vessel user ...`, `vessel token ...`, `vessel project ...`, `vessel audit ...`: who may do
//! what, how much, and what they did.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{CreateProjectRequest, CreateTokenRequest, CreateUserRequest, Grant, Quota};

use crate::client::AuditQuery;
use crate::{output, CliError, Context};

fn grant_parser(text: &str) -> Result<Grant, String> {
    Grant::parse(text)
}

/// `vessel user <verb>`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List users and their roles.
    #[command(visible_alias = "ls")]
    List,
    /// Show one user.
    Show(UserNameArgs),
    /// Create a user with roles in projects. Roles: viewer (read-only), operator (VMs, volumes,
    /// images, consoles), admin (everything, identities and quotas included).
    #[command(
        after_help = "Examples:\n  vessel user create alice --grant dev=operator --grant prod=viewer\n  vessel user create ops --grant admin          # admin of every project and the host"
    )]
    Create(UserCreateArgs),
    /// Delete a user, with its tokens and certificates.
    #[command(visible_alias = "rm")]
    Delete(UserNameArgs),
    /// Issue a client certificate for mutual TLS; writes NAME.crt and NAME.key (0600).
    #[command(
        after_help = "Examples:\n  vessel user cert alice --out-dir ./alice\n  vessel remote add lab https://host:8443 --cert ./alice/alice.crt --key ./alice/alice.key"
    )]
    Cert(UserCertArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UserNameArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct UserCreateArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// A role in a project, PROJECT=ROLE (or just ROLE for every project); repeatable.
    #[arg(long = "grant", value_name = "PROJECT=ROLE", value_parser = grant_parser)]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, Args)]
pub struct UserCertArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    pub days: u32,
    /// Where to write NAME.crt, NAME.key and ca.crt.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
}

/// `vessel token <verb>`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Create a token for a user. The token is printed once and cannot be shown again: the
    /// daemon keeps only its digest.
    #[command(
        after_help = "Examples:\n  vessel token create --user alice --expires-in 30d > alice.token\n  vessel token create --user ci --scope dev=viewer --description 'CI read-only'"
    )]
    Create(TokenCreateArgs),
    /// Revoke a token at once.
    Revoke(TokenIdArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// The user the token signs in as.
    #[arg(long, value_name = "USER")]
    pub user: String,
    /// Expiry, as a number with a unit: s, m, h or d (e.g. 12h, 30d); never when absent.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<u64>,
    /// Narrow the token to PROJECT=ROLE (repeatable); the user's own roles still cap it.
    #[arg(long = "scope", value_name = "PROJECT=ROLE", value_parser = grant_parser)]
    pub scope: Vec<Grant>,
    /// What the token is for.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
}

#[derive(Debug, Clone, Args)]
pub struct TokenIdArgs {
    /// The token's id (the part after `vsl_`, as `vessel token list` shows it).
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Seconds in `30d`, `12h`, `15m`, `90s` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(
        text.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .len(),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d, 12h, 15m or 90s"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// `vessel project <verb>`
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// List projects with their usage and limits.
    #[command(visible_alias = "ls")]
    List,
    /// Show a project's usage against its limits.
    Show(ProjectNameArgs),
    /// Create a project, optionally with limits.
    #[command(
        after_help = "Examples:\n  vessel project create dev --vms 10 --vcpus 16 --memory 32G"
    )]
    Create(ProjectCreateArgs),
    /// Set a project's limits (the ones not given become unlimited).
    #[command(after_help = "Examples:\n  vessel project quota dev --vms 20 --vcpus 32")]
    Quota(ProjectCreateArgs),
    /// Delete a project that has no VMs (`default` stays).
    #[command(visible_alias = "rm")]
    Delete(ProjectNameArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProjectNameArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectCreateArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Most VMs.
    #[arg(long, value_name = "N")]
    pub vms: Option<u64>,
    /// Most vCPUs over all VMs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Most memory over all VMs (e.g. 32G; a bare number is MiB).
    #[arg(long, value_name = "SIZE", value_parser = vessel_core::parse_memory_mib)]
    pub memory: Option<u64>,
    /// Most disk over all volumes and images of the project, by virtual (provisioned) size
    /// (e.g. 500G).
    #[arg(long, value_name = "SIZE", value_parser = vessel_core::units::parse_size_bytes)]
    pub disk: Option<u64>,
    /// Most networks.
    #[arg(long, value_name = "N")]
    pub networks: Option<u64>,
}

impl ProjectCreateArgs {
    fn quota(&self) -> Quota {
        Quota {
            vms: self.vms,
            vcpus: self.vcpus,
            memory_mib: self.memory,
            disk_bytes: self.disk,
            networks: self.networks,
        }
    }
}

/// `vessel audit <verb>`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records: who did what, from where, to what, with which result.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  vessel audit list --since 1h --identity alice\n  vessel audit list --action vms.      # every VM action"
    )]
    List(AuditListArgs),
    /// Verify the hash chain and the signed checkpoints; names each edited, deleted, inserted
    /// or reordered record. Offline (no daemon) with --data-dir and --public-key, on a copy
    /// of a data dir.
    #[command(
        after_help = "Examples:\n  vessel audit verify\n  cp -a /var/lib/vessel /tmp/copy && vessel audit verify --data-dir /tmp/copy --public-key /var/lib/vessel/audit.pub"
    )]
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AuditListArgs {
    /// Only records of the last DURATION (e.g. 1h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<u64>,
    /// Only records of this identity.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Only this action (e.g. vms.start); ending in `.` matches a prefix (vms.).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// At most this many, the newest.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct AuditVerifyArgs {
    /// Verify a (copy of a) data dir without a daemon.
    #[arg(long, value_name = "DIR", requires = "public_key")]
    pub data_dir: Option<PathBuf>,
    /// The audit public key file (DATA_DIR/audit.pub of the daemon, kept elsewhere).
    #[arg(long, value_name = "FILE", requires = "data_dir")]
    pub public_key: Option<PathBuf>,
}

pub(crate) async fn run_user(command: UserCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        UserCommand::List => {
            let users = ctx.client.list_users().await?;
            ctx.show(&users, |users| {
                let mut table = output::plain_table(Some(&["NAME", "ROLES", "CERTIFICATES"]));
                for u in users {
                    table.add_row(vec![
                        u.name.clone(),
                        grants(&u.grants),
                        u.certificates.len().to_string(),
                    ]);
                }
                output::render(&table)
            })?;
        }
        UserCommand::Show(args) => {
            let user = ctx.client.get_user(&args.name).await?;
            ctx.show(&user, |u| {
                format!(
                    "name:          {}\nroles:         {}\ncertificates:  {}\n",
                    u.name,
                    grants(&u.grants),
                    u.certificates.join(", ")
                )
            })?;
        }
        UserCommand::Create(args) => {
            let req = CreateUserRequest {
                name: args.name,
                grants: args.grants,
            };
            let user = ctx.client.create_user(&req).await?;
            ctx.show(&user, |u| {
                format!("user {} created ({})\n", u.name, grants(&u.grants))
            })?;
        }
        UserCommand::Delete(args) => {
            ctx.client.delete_user(&args.name).await?;
            ctx.print(&format!(
                "user {} deleted, with its tokens and certificates\n",
                args.name
            ))?;
        }
        UserCommand::Cert(args) => {
            let issued = ctx.client.issue_cert(&args.name, Some(args.days)).await?;
            let dir = &args.out_dir;
            let write = |name: String, text: &str, mode: u32| -> Result<PathBuf, CliError> {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let path = dir.join(name);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(|e| CliError::io(format!("cannot create {}", path.display()), e))?;
                file.write_all(text.as_bytes())
                    .map_err(|e| CliError::io(format!("cannot write {}", path.display()), e))?;
                Ok(path)
            };
            let cert = write(format!("{}.crt", args.name), &issued.cert_pem, 0o644)?;
            let key = write(format!("{}.key", args.name), &issued.key_pem, 0o600)?;
            let _ = write("ca.crt".into(), &issued.ca_pem, 0o644);
            ctx.print(&format!(
                "certificate for {} written to {} and {} (fingerprint {})\n",
                issued.user,
                cert.display(),
                key.display(),
                issued.fingerprint
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn grants(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return "-".into();
    }
    grants
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) async fn run_token(command: TokenCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        TokenCommand::List => {
            let tokens = ctx.client.list_tokens().await?;
            let now = output::now_ms();
            ctx.show(&tokens, |tokens| {
                let mut table =
                    output::plain_table(Some(&["ID", "USER", "SCOPE", "EXPIRES", "DESCRIPTION"]));
                for t in tokens {
                    let expires = match t.expires_at_ms {
                        Some(at) if at <= now => "expired".to_string(),
                        Some(at) => output::format_utc(at),
                        None => "never".into(),
                    };
                    table.add_row(vec![
                        t.id.clone(),
                        t.user.clone(),
                        grants(&t.scope),
                        expires,
                        t.description.clone(),
                    ]);
                }
                output::render(&table)
            })?;
        }
        TokenCommand::Create(args) => {
            let req = CreateTokenRequest {
                user: args.user,
                description: args.description,
                expires_in_secs: args.expires_in,
                scope: args.scope,
            };
            let created = ctx.client.create_token(&req).await?;
            // The secret goes to stdout alone (so it can be redirected to a file); the notice
            // to stderr.
            ctx.show(&created, |c| format!("{}\n", c.secret))?;
            eprintln!(
                "token {} for {}: shown once; store it safely (e.g. in a 0600 file)",
                created.token.id, created.token.user
            );
        }
        TokenCommand::Revoke(args) => {
            ctx.client.revoke_token(&args.id).await?;
            ctx.print(&format!("token {} revoked\n", args.id))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn limit(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn project_table(projects: &[vessel_api::Project]) -> String {
    let mut table = output::plain_table(Some(&[
        "NAME",
        "VMS",
        "VCPUS",
        "MEMORY MIB",
        "DISK",
        "NETWORKS",
    ]));
    for p in projects {
        let (q, u) = (&p.quota, &p.usage);
        table.add_row(vec![
            p.name.clone(),
            format!("{}/{}", u.vms, limit(q.vms)),
            format!("{}/{}", u.vcpus, limit(q.vcpus)),
            format!("{}/{}", u.memory_mib, limit(q.memory_mib)),
            format!(
                "{}/{}",
                vessel_core::units::format_size_bytes(u.disk_bytes),
                q.disk_bytes
                    .map_or("-".into(), vessel_core::units::format_size_bytes)
            ),
            format!("{}/{}", u.networks, limit(q.networks)),
        ]);
    }
    format!("{}(used/limit; - is unlimited)\n", output::render(&table))
}

pub(crate) async fn run_project(
    command: ProjectCommand,
    ctx: &Context,
) -> Result<ExitCode, CliError> {
    match command {
        ProjectCommand::List => {
            let projects = ctx.client.list_projects().await?;
            ctx.show(&projects, |p| project_table(p))?;
        }
        ProjectCommand::Show(args) => {
            let project = ctx.client.get_project(&args.name).await?;
            ctx.show(&project, |p| project_table(std::slice::from_ref(p)))?;
        }
        ProjectCommand::Create(args) => {
            let req = CreateProjectRequest {
                name: args.name.clone(),
                quota: args.quota(),
            };
            let project = ctx.client.create_project(&req).await?;
            ctx.show(&project, |p| format!("project {} created\n", p.name))?;
        }
        ProjectCommand::Quota(args) => {
            let project = ctx.client.set_quota(&args.name, &args.quota()).await?;
            ctx.show(&project, |p| project_table(std::slice::from_ref(p)))?;
        }
        ProjectCommand::Delete(args) => {
            ctx.client.delete_project(&args.name).await?;
            ctx.print(&format!("project {} deleted\n", args.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_audit(command: AuditCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        AuditCommand::List(args) => {
            let query = AuditQuery {
                since_ms: args
                    .since
                    .map(|secs| output::now_ms().saturating_sub(secs.saturating_mul(1000))),
                identity: args.identity,
                action: args.action,
                limit: args.limit,
            };
            let records = ctx.client.list_audit(&query).await?;
            ctx.show(&records, |records| {
                let mut table = output::plain_table(Some(&[
                    "SEQ", "TIME", "IDENTITY", "SOURCE", "ACTION", "TARGET", "RESULT",
                ]));
                for r in records {
                    table.add_row(vec![
                        r.seq.to_string(),
                        output::format_utc(r.at_ms),
                        r.identity.clone(),
                        r.source.clone(),
                        r.action.clone(),
                        r.target.clone(),
                        r.result.clone(),
                    ]);
                }
                output::render(&table)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify(args) => {
            let report = match (args.data_dir, args.public_key) {
                (Some(dir), Some(key)) => verify_offline(&dir, &key).await?,
                _ => ctx.client.verify_audit().await?,
            };
            ctx.show(&report, |r| {
                let mut text = format!(
                    "{} records, last seq {}, {} valid checkpoints, signed up to {}\n",
                    r.records, r.last_seq, r.valid_checkpoints, r.last_verified_checkpoint
                );
                if r.pruned_through > 0 {
                    text.push_str(&format!(
                        "records up to {} were pruned by the retention policy (signed)\n",
                        r.pruned_through
                    ));
                }
                if r.issues.is_empty() {
                    text.push_str("the audit log is intact\n");
                }
                for issue in &r.issues {
                    text.push_str(&format!("TAMPERED: {issue}\n"));
                }
                text
            })?;
            // Exit 5 when tampering was found, so scripts and monitors notice.
            Ok(if report.issues.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(5)
            })
        }
    }
}

/// Verifies a data dir's audit log without a daemon (on a copy: the store is opened for
/// reading, and a running daemon holds the original).
async fn verify_offline(
    dir: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<vessel_api::AuditVerifyReport, CliError> {
    let key_text = std::fs::read_to_string(key_file).map_err(|e| {
        CliError::io(
            format!("cannot read the public key {}", key_file.display()),
            e,
        )
    })?;
    let key = vessel_audit::parse_public_key(&key_text).map_err(|e| {
        CliError::usage(
            format!("{} is not an audit public key: {e}", key_file.display()),
            Some("use the daemon's DATA_DIR/audit.pub (64 hex digits)"),
        )
    })?;
    let db = dir.join("vessel.db");
    if !db.exists() {
        return Err(CliError::usage(
            format!("{} does not exist", db.display()),
            Some("give a (copy of a) daemon data dir"),
        ));
    }
    let store = vessel_store::SqliteStore::open(&db).map_err(|e| {
        CliError::usage(
            format!("cannot open {}: {e}", db.display()),
            Some("stop the daemon or verify a copy of the data dir"),
        )
    })?;
    let report = vessel_audit::verify_store(&store, &key)
        .await
        .map_err(|e| {
            CliError::usage(
                format!("cannot verify the audit log in {}: {e}", db.display()),
                None,
            )
        })?;
    Ok(vessel_api::AuditVerifyReport {
        records: report.records,
        last_seq: report.last_seq,
        valid_checkpoints: report.valid_checkpoints,
        last_verified_checkpoint: report.last_verified_checkpoint,
        pruned_through: report.pruned_through,
        issues: report.issues.iter().map(ToString::to_string).collect(),
        public_key: key_text.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
