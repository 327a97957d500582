//! `vessel token ...`: API tokens, shown once.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vessel_api::{CreateTokenRequest, Grant, TokenInfo};

use super::{grant_parser, grants, parse_duration};
use crate::{output, CliError, Context};

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

pub(crate) async fn run_token(command: TokenCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        TokenCommand::List => {
            let tokens = ctx.client.list_tokens().await?;
            ctx.show(&tokens, |tokens| token_table(tokens, output::now_ms()))?;
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

/// `vessel token list`.
fn token_table(tokens: &[TokenInfo], now_ms: u64) -> String {
    let mut table = output::plain_table(Some(&["ID", "USER", "SCOPE", "EXPIRES", "DESCRIPTION"]));
    for t in tokens {
        let expires = match t.expires_at_ms {
            Some(at) if at <= now_ms => "expired".to_string(),
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
}
