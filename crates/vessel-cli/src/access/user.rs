//! `vessel user ...`: users, their roles, their client certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{CreateUserRequest, Grant, User};

use super::{grant_parser, grants};
use crate::{files, output, CliError, Context};

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

pub(crate) async fn run_user(command: UserCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        UserCommand::List => {
            let users = ctx.client.list_users().await?;
            ctx.show(&users, |users| user_table(users))?;
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
                let path = dir.join(name);
                files::create_new(&path, text.as_bytes(), mode)?;
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

/// `vessel user list`.
fn user_table(users: &[User]) -> String {
    let mut table = output::plain_table(Some(&["NAME", "ROLES", "CERTIFICATES"]));
    for u in users {
        table.add_row(vec![
            u.name.clone(),
            grants(&u.grants),
            u.certificates.len().to_string(),
        ]);
    }
    output::render(&table)
}
