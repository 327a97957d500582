//! `vessel remote ...`: daemons reached over TLS. Kept in the client's config directory
//! (`$VESSEL_CONFIG_DIR`, else `$XDG_CONFIG_HOME/vessel`, else `~/.config/vessel`):
//!
//! - `config.toml`: `current = "NAME"` and `[remotes.NAME] url = "https://HOST:PORT"`
//! - `remotes/NAME/ca.crt`: the daemon's CA, pinned at `remote add`
//! - `remotes/NAME/token` (0600): the API token, if signing in with one
//! - `remotes/NAME/client.crt`, `client.key` (0600): the client certificate, if using one

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::client::tls::{self, ClientIdentity, RemoteTarget};
use crate::{files, CliError, Client, Context};

/// `vessel remote <verb>`
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Trust a daemon's remote API and sign in to it.
    ///
    /// Shows the fingerprint of the daemon's CA and asks before trusting it (the daemon logs
    /// its fingerprint at start; compare them). The token is read from --token-file, the
    /// VESSEL_TOKEN environment variable or standard input, never from the command line.
    #[command(
        after_help = "Examples:\n  vessel remote add lab https://10.0.0.5:8443\n  vessel remote add lab https://10.0.0.5:8443 --ca ./ca.crt --token-file ./token\n  vessel remote add lab https://10.0.0.5:8443 --accept-fingerprint AB:CD:... --cert me.crt --key me.key"
    )]
    Add(AddArgs),
    /// List the remotes; `*` marks the current one.
    #[command(visible_alias = "ls")]
    List,
    /// Forget a remote (its CA, token and certificate files).
    #[command(visible_alias = "rm")]
    Remove(RemoteNameArgs),
    /// Use this remote for commands from now on (`local`: the unix socket again).
    Switch(RemoteNameArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// A name for the remote (letters, digits, '-').
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The daemon's remote API, https://HOST[:PORT] (port 8443 by default).
    #[arg(value_name = "URL")]
    pub url: String,
    /// Trust this CA certificate (PEM) instead of asking about the one the daemon shows.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Trust the daemon's CA if its SHA-256 fingerprint is this one, without asking.
    #[arg(long, value_name = "FINGERPRINT")]
    pub accept_fingerprint: Option<String>,
    /// Read the token from this file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, from `vessel user cert`.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RemoteNameArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<String>,
    #[serde(default)]
    remotes: BTreeMap<String, RemoteEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteEntry {
    url: String,
}

/// A remote as `vessel remote list -o json` shows it.
#[derive(Debug, Serialize)]
struct RemoteView {
    name: String,
    url: String,
    current: bool,
    token: bool,
    certificate: bool,
}

pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VESSEL_CONFIG_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("vessel");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".config/vessel")
}

fn remote_dir(name: &str) -> PathBuf {
    config_dir().join("remotes").join(name)
}

fn load() -> Result<ConfigFile, CliError> {
    let path = config_dir().join("config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            CliError::usage(
                format!(
                    "{} is not a valid client configuration: {e}",
                    path.display()
                ),
                Some("fix or remove the file"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(CliError::io(format!("cannot read {}", path.display()), e)),
    }
}

fn save(config: &ConfigFile) -> Result<(), CliError> {
    let text = toml::to_string(config).expect("the client configuration serializes");
    write_file(&config_dir().join("config.toml"), text.as_bytes(), 0o600)
}

/// Writes a file (and its directories, 0700) with `mode` from the start, via a rename.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CliError::io(format!("cannot create {}", dir.display()), e))?;
    }
    let temp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&temp);
    files::create_new(&temp, bytes, mode)?;
    std::fs::rename(&temp, path)
        .map_err(|e| CliError::io(format!("cannot create {}", path.display()), e))
}

fn read_optional(path: &Path) -> Result<Option<String>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::io(format!("cannot read {}", path.display()), e)),
    }
}

fn read_file(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::io(format!("cannot read the {what} {}", path.display()), e))
}

fn bad(message: impl Into<String>) -> CliError {
    CliError::usage(message, None)
}

/// The client of remote `name`, from its saved files.
pub fn client_for(name: &str) -> Result<Client, CliError> {
    let config = load()?;
    let entry = config.remotes.get(name).ok_or_else(|| {
        CliError::usage(
            format!("there is no remote named {name:?}"),
            Some("list remotes with `vessel remote list`, add one with `vessel remote add`"),
        )
    })?;
    let dir = remote_dir(name);
    let ca = read_file(&dir.join("ca.crt"), "pinned CA certificate")?;
    let token = read_optional(&dir.join("token"))?.map(|t| t.trim().to_string());
    let identity = match (
        read_optional(&dir.join("client.crt"))?,
        read_optional(&dir.join("client.key"))?,
    ) {
        (Some(cert_pem), Some(key_pem)) => Some(ClientIdentity { cert_pem, key_pem }),
        _ => None,
    };
    let target = RemoteTarget::new(&entry.url, &ca, token, identity.as_ref()).map_err(bad)?;
    Ok(Client::remote(target))
}

/// The current remote, if one was chosen with `vessel remote switch`.
pub fn current() -> Result<Option<String>, CliError> {
    Ok(load()?.current)
}

pub(crate) async fn run(command: RemoteCommand, ctx: &Context) -> Result<ExitCode, CliError> {
    match command {
        RemoteCommand::Add(args) => add(args, ctx).await?,
        RemoteCommand::List => {
            let config = load()?;
            let views: Vec<RemoteView> = config
                .remotes
                .iter()
                .map(|(name, entry)| RemoteView {
                    name: name.clone(),
                    url: entry.url.clone(),
                    current: config.current.as_deref() == Some(name),
                    token: remote_dir(name).join("token").exists(),
                    certificate: remote_dir(name).join("client.crt").exists(),
                })
                .collect();
            ctx.show(&views, |views| {
                let mut text = String::new();
                let mut table = crate::output::plain_table(Some(&["", "NAME", "URL", "SIGN-IN"]));
                for v in views {
                    let how = match (v.token, v.certificate) {
                        (true, true) => "token+certificate",
                        (true, false) => "token",
                        (false, true) => "certificate",
                        (false, false) => "-",
                    };
                    table.add_row(vec![
                        if v.current { "*" } else { "" },
                        v.name.as_str(),
                        v.url.as_str(),
                        how,
                    ]);
                }
                text.push_str(&crate::output::render(&table));
                text
            })?;
        }
        RemoteCommand::Remove(args) => {
            let mut config = load()?;
            if config.remotes.remove(&args.name).is_none() {
                return Err(bad(format!("there is no remote named {:?}", args.name)));
            }
            if config.current.as_deref() == Some(args.name.as_str()) {
                config.current = None;
            }
            save(&config)?;
            let _ = std::fs::remove_dir_all(remote_dir(&args.name));
            ctx.print(&format!("remote {} removed\n", args.name))?;
        }
        RemoteCommand::Switch(args) => {
            let mut config = load()?;
            if args.name == "local" {
                config.current = None;
            } else if config.remotes.contains_key(&args.name) {
                config.current = Some(args.name.clone());
            } else {
                return Err(bad(format!("there is no remote named {:?}", args.name)));
            }
            save(&config)?;
            ctx.print(&format!("now using {}\n", args.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name != "local"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "remote name {name:?} is invalid: use letters, digits, '-' and '_' (not `local`)"
        )))
    }
}

/// Reads one line from standard input after a prompt on stderr.
fn prompt(question: &str) -> Result<String, CliError> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::io("cannot read standard input", e))?;
    Ok(line.trim().to_string())
}

/// The CA to pin: from --ca, or the one the daemon shows, after the user confirmed it.
async fn trusted_ca(args: &AddArgs) -> Result<String, CliError> {
    if let Some(path) = &args.ca {
        let pem = read_file(path, "CA certificate")?;
        let der = tls::parse_pem_cert(&pem).map_err(bad)?;
        eprintln!(
            "trusting the CA in {} (SHA-256 {})",
            path.display(),
            tls::fingerprint(&der)
        );
        return Ok(pem);
    }
    let chain = tls::fetch_chain(&args.url).await.map_err(|detail| {
        CliError::Client(crate::ClientError::Remote {
            url: args.url.clone(),
            detail,
        })
    })?;
    let ca = chain
        .last()
        .expect("fetch_chain returns at least one certificate");
    let shown = tls::fingerprint(ca);
    match &args.accept_fingerprint {
        Some(expected) if tls::same_fingerprint(expected, &shown) => {}
        Some(expected) => {
            return Err(CliError::usage(
                format!("the daemon's CA has fingerprint {shown}, not {expected}: not trusted"),
                Some("check that the URL points at your daemon; someone may be in between"),
            ))
        }
        None => {
            eprintln!(
                "The daemon at {} shows a CA with SHA-256 fingerprint\n  {shown}",
                args.url
            );
            eprintln!("Compare it with the one the daemon logged at start (or: openssl x509 -noout -fingerprint -sha256 -in DATA_DIR/tls/ca.crt).");
            let answer = prompt("Trust it? [y/N] ")?;
            if !matches!(answer.as_str(), "y" | "Y" | "yes") {
                return Err(bad("not trusted; nothing was saved"));
            }
        }
    }
    Ok(tls::to_pem(ca))
}

/// The token to sign in with: --token-file, VESSEL_TOKEN, or standard input (none with a
/// client certificate when none is given).
fn token(args: &AddArgs) -> Result<Option<String>, CliError> {
    if let Some(path) = &args.token_file {
        return Ok(Some(read_file(path, "token file")?.trim().to_string()));
    }
    if let Ok(token) = std::env::var("VESSEL_TOKEN") {
        return Ok(Some(token.trim().to_string()));
    }
    if args.cert.is_some() {
        return Ok(None);
    }
    let token = prompt("Token (from `vessel token create`): ")?;
    if token.is_empty() {
        return Err(CliError::usage(
            "no token given",
            Some("pass --token-file FILE, set VESSEL_TOKEN, or type it when asked"),
        ));
    }
    Ok(Some(token))
}

async fn add(args: AddArgs, ctx: &Context) -> Result<(), CliError> {
    check_name(&args.name)?;
    tls::authority_of(&args.url).map_err(bad)?;
    let ca_pem = trusted_ca(&args).await?;
    let token = token(&args)?;
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert_pem: read_file(cert, "client certificate")?,
            key_pem: read_file(key, "client key")?,
        }),
        _ => None,
    };
    let target =
        RemoteTarget::new(&args.url, &ca_pem, token.clone(), identity.as_ref()).map_err(bad)?;
    // Sign in before saving anything: a wrong token or certificate leaves no remote behind.
    let whoami = Client::remote(target).whoami().await?;
    let dir = remote_dir(&args.name);
    write_file(&dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;
    match &token {
        Some(token) => write_file(&dir.join("token"), format!("{token}\n").as_bytes(), 0o600)?,
        None => {
            let _ = std::fs::remove_file(dir.join("token"));
        }
    }
    if let Some(identity) = &identity {
        write_file(&dir.join("client.crt"), identity.cert_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("client.key"), identity.key_pem.as_bytes(), 0o600)?;
    }
    let mut config = load()?;
    config.remotes.insert(
        args.name.clone(),
        RemoteEntry {
            url: args.url.trim_end_matches('/').to_string(),
        },
    );
    save(&config)?;
    ctx.show(&whoami, |w| {
        format!(
            "signed in to {} as {} ({}); `vessel remote switch {}` to use it\n",
            args.name, w.identity, w.method, args.name
        )
    })
}
