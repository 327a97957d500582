//! Bad input gets a 4xx that says what to fix, and leaves nothing behind.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One raw HTTP/1.1 exchange, so that malformed bodies can be sent as they are.
async fn raw(daemon: &Daemon, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: vessel\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| body.find('{').map(|i| &body[i..]))
        .and_then(|body| serde_json::from_str(body.trim_end_matches(|c: char| c != '}')).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn message(json: &serde_json::Value) -> String {
    json["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn create_body(overrides: serde_json::Value) -> Vec<u8> {
    let guest = guest();
    let mut body = serde_json::json!({
        "name": "ok1", "cpus": 1, "memory_mib": 128,
        "kernel": guest.kernel, "initrd": guest.initrd,
    });
    for (k, v) in overrides.as_object().unwrap() {
        body[k] = v.clone();
    }
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test]
async fn every_bad_create_is_rejected_with_a_reason_and_stores_nothing() {
    let daemon = Daemon::start();
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (serde_json::json!({"name": ""}), 400, "empty"),
        (
            serde_json::json!({"name": "n".repeat(64)}),
            400,
            "limit is 63",
        ),
        (serde_json::json!({"name": "a/b"}), 400, "'/'"),
        (serde_json::json!({"name": ".."}), 400, "must start with"),
        (serde_json::json!({"name": "x..y"}), 400, "'..'"),
        (serde_json::json!({"name": "bell\u{7}"}), 400, "contains"),
        (serde_json::json!({"cpus": 0}), 400, "vCPUs"),
        (serde_json::json!({"cpus": 100000}), 400, "vCPUs"),
        (serde_json::json!({"memory_mib": 0}), 400, "minimum"),
        (
            serde_json::json!({"memory_mib": 1u64 << 40}),
            400,
            "host has only",
        ),
        (
            serde_json::json!({"kernel": "/nonexistent/vmlinuz"}),
            400,
            "cannot be read",
        ),
        (
            serde_json::json!({"initrd": "/nonexistent/initrd"}),
            400,
            "cannot be read",
        ),
        (
            serde_json::json!({"kernel": "/etc"}),
            400,
            "not a regular file",
        ),
        (serde_json::json!({"kernel": null}), 400, "nothing to boot"),
        (
            serde_json::json!({"disk": "/nonexistent.qcow2", "kernel": null, "initrd": null}),
            400,
            "cannot be read",
        ),
        (
            serde_json::json!({"colour": "blue"}),
            400,
            "unknown field `colour`",
        ),
        (serde_json::json!({"cpus": "two"}), 400, "invalid type"),
    ];
    for (overrides, status, expected) in cases {
        let (got, json) = raw(&daemon, "POST", "/v1/vms", &create_body(overrides.clone())).await;
        assert_eq!(got, status, "{overrides}: {json}");
        assert!(message(&json).contains(expected), "{overrides}: {json}");
        assert_eq!(json["error"]["code"], "invalid_argument", "{json}");
    }
    let (status, json) = raw(&daemon, "POST", "/v1/vms", b"{\"name\": \"x\", ").await;
    assert_eq!(status, 400, "{json}");
    assert!(message(&json).contains("EOF"), "malformed JSON: {json}");
    let huge = vec![b' '; 70 * 1024];
    let (status, json) = raw(&daemon, "POST", "/v1/vms", &huge).await;
    assert_eq!(status, 413, "{json}");
    assert!(message(&json).contains("larger than"), "{json}");
    let (status, json) = raw(
        &daemon,
        "POST",
        "/v1/vms?colour=blue",
        &create_body(serde_json::json!({})),
    )
    .await;
    assert_eq!(status, 400, "{json}");
    assert!(
        daemon.client().list_vms().await.unwrap().is_empty(),
        "nothing half-written"
    );
    assert!(
        daemon.client().list_operations().await.unwrap().is_empty(),
        "no operation recorded"
    );
}

#[tokio::test]
async fn duplicate_names_conflict_and_unknown_vms_are_not_found() {
    let daemon = Daemon::start();
    let client = daemon.client();
    create(&client, &guest_vm("dup1")).await;
    let before = client.get_vm("dup1").await.unwrap();
    let (status, json) = raw(
        &daemon,
        "POST",
        "/v1/vms",
        &create_body(serde_json::json!({"name": "dup1", "cpus": 2})),
    )
    .await;
    assert_eq!(status, 409, "{json}");
    assert!(message(&json).contains("already exists"), "{json}");
    assert_eq!(
        client.get_vm("dup1").await.unwrap(),
        before,
        "the existing VM is untouched"
    );
    let (status, json) = raw(&daemon, "POST", "/v1/vms/ghost/start", b"").await;
    assert_eq!(status, 404, "{json}");
    assert!(
        json["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("vessel vm list"),
        "{json}"
    );
    let (status, _) = raw(&daemon, "POST", "/v1/vms/dup1/resume", b"").await;
    assert_eq!(status, 409, "resume of a stopped VM");
    let (status, json) = raw(&daemon, "GET", "/v1/nope", b"").await;
    assert_eq!(status, 404, "{json}");
    let (status, json) = raw(&daemon, "PATCH", "/v1/vms/dup1", br#"{"memory_mib": 1}"#).await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(
        client.get_vm("dup1").await.unwrap().spec,
        before.spec,
        "a failed edit changes nothing"
    );
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let daemon = Daemon::start();
    let other_socket = daemon.socket.with_file_name("other.sock");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["daemon", "--data-dir"])
        .arg(&daemon.data_dir)
        .arg("--socket")
        .arg(&other_socket)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("held by another vessel daemon"), "{stderr}");
    assert!(
        stderr.contains(&daemon.pid().to_string()),
        "names the holder: {stderr}"
    );
}
