//! A daemon serving the remote API over real TLS on loopback, and clients of it signed in
//! with tokens: the harness of the security and tenant tests.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use vessel_api::{CreateTokenRequest, CreateUserRequest, Grant, Role};
use vessel_cli::tls::RemoteTarget;
use vessel_cli::Client;

use super::Daemon;

pub struct Remote {
    pub daemon: Daemon,
    pub url: String,
    pub ca_pem: String,
    pub config: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Remote {
    pub fn start() -> Remote {
        Remote::start_with(&[])
    }

    /// With more daemon flags (e.g. `--config FILE`).
    pub fn start_with(extra_args: &[&str]) -> Remote {
        let (daemon, addr) = Self::daemon_on_a_free_port(extra_args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "no TLS listener; log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let ca_pem = std::fs::read_to_string(daemon.data_dir.join("tls/ca.crt")).unwrap();
        Remote {
            daemon,
            url: format!("https://{addr}"),
            ca_pem,
            config: tempfile::tempdir().unwrap(),
        }
    }

    /// A daemon listening on a free loopback port. The port is free when chosen, but another
    /// test's outgoing connection may take it before the daemon binds it (both come from the
    /// ephemeral range): then the daemon exits at once and another port is tried.
    fn daemon_on_a_free_port(extra_args: &[&str]) -> (Daemon, String) {
        let mut last = String::new();
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut args = vec!["--listen", addr.as_str()];
            args.extend_from_slice(extra_args);
            match Daemon::try_start_with(&args) {
                Ok(daemon) => return (daemon, addr),
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port in 5 tries; last: {last}")
    }

    pub fn root(&self) -> Client {
        self.daemon.client()
    }

    /// Makes a project (as root) with these limits.
    pub async fn project(&self, name: &str, quota: vessel_api::Quota) {
        self.root()
            .create_project(&vessel_api::CreateProjectRequest {
                name: name.into(),
                quota,
            })
            .await
            .unwrap();
    }

    /// A user with `grants` and a token of it.
    pub async fn user(&self, name: &str, grants: Vec<Grant>) -> String {
        self.root()
            .create_user(&CreateUserRequest {
                name: name.into(),
                grants,
            })
            .await
            .unwrap();
        self.token(name, None).await
    }

    pub async fn token(&self, user: &str, expires_in_secs: Option<u64>) -> String {
        self.root()
            .create_token(&CreateTokenRequest {
                user: user.into(),
                expires_in_secs,
                ..Default::default()
            })
            .await
            .unwrap()
            .secret
    }

    pub fn target(&self, token: Option<&str>) -> RemoteTarget {
        RemoteTarget::new(&self.url, &self.ca_pem, token.map(str::to_string), None).unwrap()
    }

    pub fn client(&self, token: &str) -> Client {
        Client::remote(self.target(Some(token)))
    }

    /// The `vessel` CLI with this test's client configuration directory.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vessel"));
        command.args(args);
        remote_cli(command, self.config.path(), stdin)
    }

    /// The audit records of `identity` (all with `None`), read as root.
    pub async fn audit_of(&self, identity: Option<&str>) -> Vec<vessel_api::AuditRecord> {
        self.root()
            .list_audit(&vessel_cli::AuditQuery {
                identity: identity.map(str::to_string),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub fn socket(&self) -> String {
        self.daemon.socket.to_string_lossy().into_owned()
    }

    /// One raw request over TLS: (status, body).
    pub async fn raw(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "vessel")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.target(token).send(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Runs a `vessel` CLI command as a remote client: with the client configuration directory
/// `config` and none of the variables that choose a target, fed `stdin`.
pub fn remote_cli(mut command: Command, config: &std::path::Path, stdin: &str) -> Output {
    let mut child = command
        .env("VESSEL_CONFIG_DIR", config)
        .env_remove("VESSEL_SOCKET")
        .env_remove("VESSEL_REMOTE")
        .env_remove("VESSEL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn grant(project: &str, role: Role) -> Grant {
    Grant::new(project, role)
}
