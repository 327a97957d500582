//! The client against a canned HTTP server on a temporary unix socket: does it send the right
//! method, path and body, and does it read success and error answers?

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use vessel_api::{
    Boot, CreateVmRequest, DesiredState, ErrorCode, Machine, NicKind, OperationAction,
    OperationStatus, RestartPolicy, StopVmRequest, Vm, VmSpec, VmState,
};
use vessel_cli::{Client, ClientError, Outcome, Unreachable, VmAction};

/// One request as the server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Serves one connection with a canned response and reports the request it got.
fn serve_once(socket: &Path, status: &str, body: &str) -> JoinHandle<Seen> {
    let listener = UnixListener::bind(socket).unwrap();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed before sending a request");
            data.extend_from_slice(&buf[..n]);
            if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_string();
        let target = request_line.next().unwrap().to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (key, value) = line.split_once(':').unwrap();
                (key.trim().to_string(), value.trim().to_string())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, value)| value.parse().unwrap());
        while data.len() < head_end + length {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed in the middle of its body");
            data.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8(data[head_end..head_end + length].to_vec()).unwrap();
        stream.write_all(response.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        Seen {
            method,
            target,
            headers,
            body,
        }
    })
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("vessel.sock")
}

fn sample_vm() -> Vm {
    Vm {
        project: "default".into(),
        spec: VmSpec {
            name: "web1".into(),
            cpus: 2,
            memory_mib: 512,
            boot: Boot::Kernel {
                kernel: "/k".into(),
                initrd: None,
                cmdline: Some("console=ttyS0".into()),
            },
            machine: Machine::Microvm,
            nic: NicKind::User,
            restart_policy: RestartPolicy::Never,
            disks: vec![],
            cloud_init: false,
            nics: vec![],
        },
        desired_state: DesiredState::Running,
        state: VmState::Running,
        reason: None,
        pid: Some(1234),
        accelerator: Some("tcg".into()),
        restart_count: 0,
        created_at_ms: 1,
        state_changed_at_ms: 2,
    }
}

#[tokio::test]
async fn create_sends_post_with_json_body_and_reads_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let vm = sample_vm();
    let server = serve_once(&socket, "201 Created", &serde_json::to_string(&vm).unwrap());
    let request = CreateVmRequest {
        name: "web1".into(),
        cpus: 2,
        memory_mib: 512,
        kernel: Some("/k".into()),
        cmdline: Some("console=ttyS0".into()),
        start: true,
        ..Default::default()
    };
    let outcome = Client::new(&socket)
        .create_vm(&request, true)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/v1/vms");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let sent: CreateVmRequest = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(sent, request);
    match outcome {
        Outcome::Done(got) => assert_eq!(got, vm),
        Outcome::Accepted(_) => panic!("expected the VM"),
    }
}

#[tokio::test]
async fn no_wait_sends_wait_false_and_reads_the_accepted_operation() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let body = r#"{"operation":{"id":"op-7","vm":"web1","action":"stop","status":"pending","force":false,"timeout_secs":5,"created_at_ms":10}}"#;
    let server = serve_once(&socket, "202 Accepted", body);
    let stop = VmAction::Stop(StopVmRequest {
        force: false,
        timeout_secs: Some(5),
    });
    let outcome = Client::new(&socket)
        .vm_action("web1", &stop, false)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/v1/vms/web1/stop?wait=false");
    assert_eq!(seen.body, r#"{"force":false,"timeout_secs":5}"#);
    let Outcome::Accepted(accepted) = outcome else {
        panic!("expected an accepted operation");
    };
    assert_eq!(accepted.operation.id, "op-7");
    assert_eq!(accepted.operation.action, OperationAction::Stop);
    assert_eq!(accepted.operation.status, OperationStatus::Pending);
}

#[tokio::test]
async fn bodiless_actions_send_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let server = serve_once(
        &socket,
        "200 OK",
        &serde_json::to_string(&sample_vm()).unwrap(),
    );
    Client::new(&socket)
        .vm_action("web1", &VmAction::Pause, true)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/v1/vms/web1/pause");
    assert_eq!(seen.body, "");
}

#[tokio::test]
async fn delete_sends_force_in_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let body = r#"{"id":"op-9","vm":"web1","action":"delete","status":"succeeded","force":true,"created_at_ms":10,"finished_at_ms":20}"#;
    let server = serve_once(&socket, "200 OK", body);
    let outcome = Client::new(&socket)
        .delete_vm("web1", true, true)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, "DELETE");
    assert_eq!(seen.target, "/v1/vms/web1?force=true");
    let Outcome::Done(op) = outcome else {
        panic!("expected the finished operation");
    };
    assert_eq!(op.status, OperationStatus::Succeeded);
}

#[tokio::test]
async fn error_body_becomes_an_api_error_with_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let body = r#"{"error":{"code":"not_found","message":"VM 'nope' does not exist","hint":"see `vessel vm list`"}}"#;
    let server = serve_once(&socket, "404 Not Found", body);
    let err = Client::new(&socket).get_vm("nope").await.unwrap_err();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/v1/vms/nope");
    match &err {
        ClientError::Api { status, error } => {
            assert_eq!(*status, 404);
            assert_eq!(error.code, ErrorCode::NotFound);
            assert_eq!(error.message, "VM 'nope' does not exist");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 3);
    assert_eq!(err.hint().as_deref(), Some("see `vessel vm list`"));
}

#[tokio::test]
async fn non_json_error_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let server = serve_once(&socket, "502 Bad Gateway", "upstream gone");
    let err = Client::new(&socket).list_vms().await.unwrap_err();
    server.await.unwrap();
    assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("upstream gone"), "{err}");
    assert_eq!(err.exit_code(), 1);
}

#[tokio::test]
async fn missing_socket_is_unreachable_with_exit_7() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let err = Client::new(&socket).list_vms().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unreachable {
                reason: Unreachable::Missing,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 7);
    assert!(err.to_string().contains(&socket.display().to_string()));
}

#[tokio::test]
async fn socket_without_listener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let err = Client::new(&socket).host_info().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unreachable {
                reason: Unreachable::Refused,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 7);
}

#[tokio::test]
async fn run_maps_an_api_error_to_its_exit_code() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: vessel_cli::Command,
        #[command(flatten)]
        global: vessel_cli::GlobalOpts,
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let body =
        r#"{"error":{"code":"conflict","message":"VM 'web1' is running","hint":"stop it first"}}"#;
    let server = serve_once(&socket, "409 Conflict", body);
    let cli = Cli::try_parse_from([
        "vessel",
        "vm",
        "delete",
        "web1",
        "--socket",
        socket.to_str().unwrap(),
    ])
    .unwrap();
    let code = vessel_cli::run(cli.command, cli.global).await;
    let seen = server.await.unwrap();
    assert_eq!(seen.target, "/v1/vms/web1?force=false");
    assert_eq!(code, std::process::ExitCode::from(4));
}
