//! `vessel audit ...`: list the audit log, verify its chain (also offline, on a data dir).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use vessel_api::{AuditRecord, AuditVerifyReport};

use super::parse_duration;
use crate::client::AuditQuery;
use crate::{output, CliError, Context};

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
            ctx.show(&records, |records| audit_table(records))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify(args) => {
            let report = match (args.data_dir, args.public_key) {
                (Some(dir), Some(key)) => verify_offline(&dir, &key).await?,
                _ => ctx.client.verify_audit().await?,
            };
            ctx.show(&report, verify_text)?;
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
) -> Result<AuditVerifyReport, CliError> {
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
    Ok(AuditVerifyReport {
        records: report.records,
        last_seq: report.last_seq,
        valid_checkpoints: report.valid_checkpoints,
        last_verified_checkpoint: report.last_verified_checkpoint,
        pruned_through: report.pruned_through,
        issues: report.issues.iter().map(ToString::to_string).collect(),
        public_key: key_text.trim().to_string(),
    })
}

/// `vessel audit list`.
fn audit_table(records: &[AuditRecord]) -> String {
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
}

/// `vessel audit verify`: the counts, then every issue found.
fn verify_text(r: &AuditVerifyReport) -> String {
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
}
