//! The remote API end to end over real TLS on loopback: the certificate trust flow, token
//! sign-in, bad credentials, mutual TLS, the permission matrix over every route of the OpenAPI
//! document, the quota race, and audit tampering in the daemon's real database.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use vessel_api::Role;

use common::remote::{code, grant, text, Remote};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_add_shows_the_fingerprint_and_signs_in_with_a_token() {
    let r = Remote::start();
    let token = r
        .user("alice", vec![grant("default", Role::Operator)])
        .await;
    let der = vessel_cli::tls::parse_pem_cert(&r.ca_pem).unwrap();
    let fingerprint = vessel_cli::tls::fingerprint(&der);

    let refused = r.cli(&["remote", "add", "lab", &r.url], "n\n");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains(&fingerprint),
        "{}",
        text(&refused.stderr)
    );
    assert!(!r.config.path().join("config.toml").exists());

    let wrong = r.cli(
        &[
            "remote",
            "add",
            "lab",
            &r.url,
            "--accept-fingerprint",
            "AB:CD",
        ],
        "",
    );
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        text(&wrong.stderr).contains("not trusted"),
        "{}",
        text(&wrong.stderr)
    );

    let bad_token = r.cli(
        &["remote", "add", "lab", &r.url],
        "y\nvsl_0000000000000000_00\n",
    );
    assert_eq!(
        bad_token.status.code(),
        Some(8),
        "{}",
        text(&bad_token.stderr)
    );
    assert!(!r.config.path().join("remotes/lab/ca.crt").exists());

    let added = r.cli(&["remote", "add", "lab", &r.url], &format!("y\n{token}\n"));
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(
        text(&added.stdout).contains("signed in to lab as alice (token)"),
        "{}",
        text(&added.stdout)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(r.config.path().join("remotes/lab/token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let list = r.cli(&["--remote", "lab", "vm", "list", "-o", "json"], "");
    assert!(list.status.success(), "{}", text(&list.stderr));
    let denied = r.cli(&["--remote", "lab", "user", "list"], "");
    assert_eq!(denied.status.code(), Some(8));
    assert!(
        text(&denied.stderr).contains("identity.admin"),
        "{}",
        text(&denied.stderr)
    );

    // After `remote switch`, commands without --remote go to the remote.
    assert!(r.cli(&["remote", "switch", "lab"], "").status.success());
    let remotes = r.cli(&["remote", "list"], "");
    assert!(
        text(&remotes.stdout).contains("lab"),
        "{}",
        text(&remotes.stdout)
    );
    let projects = r.cli(&["project", "show", "default", "-o", "json"], "");
    assert!(projects.status.success(), "{}", text(&projects.stderr));
    // An explicit --socket still means the local daemon.
    let local = r.cli(&["--socket", &r.socket(), "user", "list"], "");
    assert!(local.status.success(), "{}", text(&local.stderr));
    assert!(r.cli(&["remote", "remove", "lab"], "").status.success());
    assert!(!r.config.path().join("remotes/lab").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_expired_and_revoked_tokens_are_401_and_repeated_failures_429() {
    let r = Remote::start();
    let good = r.user("carol", vec![grant("*", Role::Viewer)]).await;
    assert_eq!(r.raw(Some(&good), "GET", "/v1/vms", "").await.0, 200);

    let (status, body) = r.raw(None, "GET", "/v1/vms", "").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "unauthenticated"),
        "{body}"
    );
    let (status, _) = r.raw(Some("not-a-token"), "GET", "/v1/vms", "").await;
    assert_eq!(status, 401);
    let forged = format!("{}{}", &good[..21], "0".repeat(64));
    let (status, body) = r.raw(Some(&forged), "GET", "/v1/vms", "").await;
    assert_eq!(status, 401, "{body}");

    let expiring = r.token("carol", Some(1)).await;
    assert_eq!(r.raw(Some(&expiring), "GET", "/v1/vms", "").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = r.raw(Some(&expiring), "GET", "/v1/vms", "").await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");

    let revoked = r.token("carol", None).await;
    // Used once (so the daemon has it cached), then revoked: refused at the next request.
    assert_eq!(r.raw(Some(&revoked), "GET", "/v1/vms", "").await.0, 200);
    let id = revoked[4..20].to_string();
    r.root().revoke_token(&id).await.unwrap();
    assert_eq!(r.raw(Some(&revoked), "GET", "/v1/vms", "").await.0, 401);

    // Denied requests are audited, as "-" (nobody) from the client's address.
    let records = r
        .root()
        .list_audit(&vessel_cli::AuditQuery {
            identity: Some("-".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(records.len() >= 5, "{records:?}");
    assert!(records
        .iter()
        .all(|rec| rec.result.starts_with("denied") && rec.source.starts_with("127.0.0.1:")));

    // Five failures so far; after ten, the address's failures are refused for a while (a good
    // token still passes: host_limits.rs tests that it is not locked out).
    for _ in 0..5 {
        assert_eq!(r.raw(Some("nope"), "GET", "/v1/vms", "").await.0, 401);
    }
    let (status, body) = r.raw(Some("nope"), "GET", "/v1/vms", "").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (429, "too_many_requests"),
        "{body}"
    );
    assert_eq!(r.raw(Some(&good), "GET", "/v1/vms", "").await.0, 200);
    // The unix socket is not affected.
    r.root().list_vms().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_signs_in_with_a_certificate_issued_by_the_daemon() {
    let r = Remote::start();
    r.user("bob", vec![grant("default", Role::Viewer)]).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = r.cli(
        &[
            "--socket",
            &r.socket(),
            "user",
            "cert",
            "bob",
            "--out-dir",
            &out_dir.path().to_string_lossy(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = |name: &str| out_dir.path().join(name).to_string_lossy().into_owned();
    let added = r.cli(
        &[
            "remote",
            "add",
            "cert",
            &r.url,
            "--ca",
            &path("ca.crt"),
            "--cert",
            &path("bob.crt"),
            "--key",
            &path("bob.key"),
            "-o",
            "json",
        ],
        "",
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let whoami: vessel_api::Whoami = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(
        (whoami.identity.as_str(), whoami.method.as_str()),
        ("bob", "certificate")
    );
    let list = r.cli(&["--remote", "cert", "vm", "list"], "");
    assert!(list.status.success(), "{}", text(&list.stderr));

    // A deleted user's certificate no longer signs in.
    r.root().delete_user("bob").await.unwrap();
    let after = r.cli(&["--remote", "cert", "vm", "list"], "");
    assert_eq!(after.status.code(), Some(8), "{}", text(&after.stderr));
}

/// Every (method, path) of docs/openapi.json.
fn openapi_routes() -> Vec<(String, String)> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(doc).unwrap()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

/// A template with its parameters filled by names that exist nowhere: allowed requests then
/// end in 404 or 400 in the handler, changing nothing.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "nosuch0" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_openapi_document_allows_and_denies_per_the_permission_table() {
    use vessel_auth::{Identity, Scope};
    let r = Remote::start();
    let routes = openapi_routes();
    assert!(routes.len() > 60, "{}", routes.len());
    let missing: Vec<_> = routes
        .iter()
        .filter(|(m, p)| vessel_auth::lookup(m, p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a row in vessel_auth::ROUTES: {missing:?}"
    );

    let users = [
        ("viewer", vec![grant("*", Role::Viewer)]),
        ("operator", vec![grant("*", Role::Operator)]),
        ("admin", vec![grant("*", Role::Admin)]),
        ("devadmin", vec![grant("dev", Role::Admin)]),
        ("nobody", vec![]),
    ];
    let mut checked = 0;
    for (name, grants) in users {
        let token = r.user(name, grants.clone()).await;
        let identity = Identity {
            name: name.into(),
            grants,
        };
        for (method, template) in &routes {
            if template == "/v1/host/master-key/rotate" && name != "nobody" && name != "viewer" {
                // Allowed for admins: it would really rotate the master key; checked below.
                continue;
            }
            let m = vessel_auth::lookup(method, template).unwrap();
            let allowed = match m.route.permission {
                None => true,
                Some(permission) => {
                    let scope = match m.route.target {
                        vessel_auth::Target::Host => Scope::Host,
                        // Named objects do not exist (any project), bodies say nothing (default).
                        vessel_auth::Target::Body => Scope::Project("default"),
                        vessel_auth::Target::Project => Scope::Project("nosuch0"),
                        // A volume without a project of its own belongs to `default`; for a
                        // caller who cannot read `default` it is missing (any project).
                        vessel_auth::Target::Volume if identity.role_in("default").is_some() => {
                            Scope::Project("default")
                        }
                        _ => Scope::AnyProject,
                    };
                    identity.check(permission, scope).is_ok()
                }
            };
            let body = if method == "GET" || method == "DELETE" {
                ""
            } else {
                "{}"
            };
            let (status, answer) = r.raw(Some(&token), method, &concrete(template), body).await;
            if allowed {
                assert!(
                    status != 401 && status != 403,
                    "{name} should be allowed {method} {template}, got {status} {answer}"
                );
            } else {
                assert_eq!(
                    status, 403,
                    "{name} should be denied {method} {template}: {answer}"
                );
                let permission = m.route.permission.unwrap().as_str();
                assert!(answer.contains(permission), "{answer}");
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
    // Denied requests never reached a handler: a viewer's valid create made nothing.
    let viewer = r.token("viewer", None).await;
    let (status, _) = r
        .raw(
            Some(&viewer),
            "POST",
            "/v1/projects",
            r#"{"name":"made-by-viewer"}"#,
        )
        .await;
    assert_eq!(status, 403);
    assert!(r.root().get_project("made-by-viewer").await.is_err());
    // A route missing from the table is refused to everyone but root.
    let (status, body) = r.raw(Some(&viewer), "GET", "/v1/no-such-route", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("permission table"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_exceed_the_project_quota() {
    let r = Remote::start();
    let root = r.root();
    let quota = vessel_api::Quota {
        vms: Some(5),
        vcpus: Some(5),
        ..Default::default()
    };
    r.project("q", quota).await;
    let kernel = r.daemon.data_dir.join("fake-kernel");
    std::fs::write(&kernel, b"not booted").unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = r.root();
        let request = vessel_api::CreateVmRequest {
            name: format!("q{i}"),
            cpus: 1,
            memory_mib: 64,
            kernel: Some(kernel.to_string_lossy().into_owned()),
            project: Some("q".into()),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            client.create_vm(&request, true).await
        }));
    }
    let (mut ok, mut over) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(vessel_cli::ClientError::Api { status, error }) => {
                assert_eq!(
                    (status, error.code),
                    (409, vessel_api::ErrorCode::QuotaExceeded)
                );
                assert!(
                    error.message.contains("vms quota: limit 5, in use 5"),
                    "{}",
                    error.message
                );
                over += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, over), (5, 11));
    let project = root.get_project("q").await.unwrap();
    assert_eq!((project.usage.vms, project.usage.vcpus), (5, 5));
    let all = root.list_vms().await.unwrap();
    assert_eq!(all.iter().filter(|vm| vm.project == "q").count(), 5);

    // Growing a VM is checked too: 5 vCPUs used of 5, one more is over; with a limit of 6 it fits.
    let grow = vessel_api::EditVmRequest {
        cpus: Some(2),
        ..Default::default()
    };
    let vms = root.list_vms().await.unwrap();
    let first = vms
        .iter()
        .find(|vm| vm.project == "q")
        .unwrap()
        .spec
        .name
        .clone();
    let err = root.edit_vm(&first, &grow, true).await.unwrap_err();
    assert!(
        err.to_string().contains("vcpus quota: limit 5, in use 5"),
        "{err}"
    );
    let raised = vessel_api::Quota {
        vms: Some(5),
        vcpus: Some(6),
        ..Default::default()
    };
    root.set_quota("q", &raised).await.unwrap();
    root.edit_vm(&first, &grow, true).await.unwrap();
    assert_eq!(root.get_project("q").await.unwrap().usage.vcpus, 6);

    // Racing growths: room for 2 more vCPUs, 4 edits of +1 each pass the request's check, and
    // the re-check at the commit lets exactly 2 through.
    let roomier = vessel_api::Quota {
        vcpus: Some(8),
        ..raised
    };
    root.set_quota("q", &roomier).await.unwrap();
    let mut edits = Vec::new();
    for vm in vms
        .iter()
        .filter(|vm| vm.project == "q" && vm.spec.name != first)
    {
        let (client, name, grow) = (r.root(), vm.spec.name.clone(), grow.clone());
        edits.push(tokio::spawn(async move {
            client.edit_vm(&name, &grow, true).await
        }));
    }
    let mut grown = 0;
    for edit in edits {
        match edit.await.unwrap() {
            Ok(_) => grown += 1,
            Err(e) => assert!(e.to_string().contains("vcpus quota"), "{e}"),
        }
    }
    assert_eq!(grown, 2);
    assert_eq!(root.get_project("q").await.unwrap().usage.vcpus, 8);

    // A user of another project does not see these VMs.
    let token = r.user("dev", vec![grant("dev", Role::Operator)]).await;
    assert!(r.client(&token).list_vms().await.unwrap().is_empty());
    let token = r.user("qview", vec![grant("q", Role::Viewer)]).await;
    assert_eq!(r.client(&token).list_vms().await.unwrap().len(), 5);
}

/// A network that reaches the host's own networking (a host bridge, an uplink, VXLAN tunnels)
/// needs a host admin; a project's operator makes only networks that stay inside Vessel.
#[tokio::test(flavor = "multi_thread")]
async fn networks_that_touch_the_host_need_a_host_admin() {
    let r = Remote::start();
    r.project("dev", Default::default()).await;
    let token = r.user("otto", vec![grant("dev", Role::Operator)]).await;
    let (status, body) = r
        .raw(
            Some(&token),
            "POST",
            "/v1/networks",
            r#"{"name":"devnat","kind":"user","project":"dev"}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let touching = [
        (
            r#"{"name":"devbr","kind":"bridge","bridge":"br0","project":"dev"}"#,
            "host bridge",
        ),
        (
            r#"{"name":"devvx","kind":"vxlan","subnet":"10.93.0.0/24","vni":42,"peers":["192.168.250.2"],"project":"dev"}"#,
            "VXLAN",
        ),
        (
            r#"{"name":"devup","kind":"managed","subnet":"10.94.0.0/24","uplink":"lo","project":"dev"}"#,
            "uplink",
        ),
    ];
    for (request, what) in touching {
        let (status, body) = r.raw(Some(&token), "POST", "/v1/networks", request).await;
        assert_eq!(status, 403, "{request}: {body}");
        assert!(body.contains("host.admin") && body.contains(what), "{body}");
    }
    let names: Vec<String> = r
        .root()
        .list_networks()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["devnat".to_string()]);
}

/// Operations and events belong to the project of what they work on: a project's operator sees
/// only those, and cannot read or cancel another project's operation even knowing its id.
#[tokio::test(flavor = "multi_thread")]
async fn operations_and_events_are_seen_only_in_their_project() {
    let r = Remote::start();
    let root = r.root();
    r.project("dev", Default::default()).await;
    let kernel = r.daemon.data_dir.join("fake-kernel");
    std::fs::write(&kernel, b"not booted").unwrap();
    for (vm, project) in [("prodvm", "default"), ("devvm", "dev")] {
        let request = vessel_api::CreateVmRequest {
            name: vm.into(),
            cpus: 1,
            memory_mib: 64,
            kernel: Some(kernel.to_string_lossy().into_owned()),
            project: Some(project.into()),
            ..Default::default()
        };
        root.create_vm(&request, true).await.unwrap();
        // An edit records an event for the VM.
        let edit = vessel_api::EditVmRequest {
            memory_mib: Some(96),
            ..Default::default()
        };
        root.edit_vm(vm, &edit, true).await.unwrap();
    }
    let all = root.list_operations().await.unwrap();
    let prod_op = all
        .iter()
        .find(|op| op.vm == "prodvm" && op.action == vessel_api::OperationAction::Create)
        .unwrap();
    assert_eq!(prod_op.project, "default");
    let dev_op = all
        .iter()
        .find(|op| op.vm == "devvm" && op.action == vessel_api::OperationAction::Create)
        .unwrap();
    assert_eq!(dev_op.project, "dev");

    let token = r.user("dora", vec![grant("dev", Role::Operator)]).await;
    let dora = r.client(&token);
    let seen: Vec<String> = dora
        .list_operations()
        .await
        .unwrap()
        .into_iter()
        .map(|op| op.vm)
        .collect();
    assert_eq!(seen, vec!["devvm".to_string(); 2]);
    dora.get_operation(&dev_op.id).await.unwrap();
    // Another project's operation is, to her, missing: the same 404 as for an id that does
    // not exist (a 403 would tell that it exists).
    let err = dora.get_operation(&prod_op.id).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let cancel = format!("/v1/operations/{}/cancel", prod_op.id);
    let (status, body) = r.raw(Some(&token), "POST", &cancel, "").await;
    assert_eq!(status, 404, "{body}");
    let (_, missing) = r
        .raw(
            Some(&token),
            "POST",
            "/v1/operations/00000000-0000-4000-8000-000000000000/cancel",
            "",
        )
        .await;
    assert_eq!(
        body.replace(&prod_op.id, "ID"),
        missing.replace("00000000-0000-4000-8000-000000000000", "ID")
    );

    let events = dora.list_events(None, 100).await.unwrap();
    assert!(events.iter().any(|e| e.vm == "devvm"), "{events:?}");
    assert!(events.iter().all(|e| e.vm != "prodvm"), "{events:?}");
    let everything = root.list_events(None, 100).await.unwrap();
    assert!(everything.iter().any(|e| e.vm == "prodvm"));
}

const MIB: u64 = 1 << 20;

fn is_disk_quota_error(e: &vessel_cli::ClientError) -> bool {
    match e {
        vessel_cli::ClientError::Api { status, error } => {
            *status == 409
                && error.code == vessel_api::ErrorCode::QuotaExceeded
                && error.message.contains("disk quota")
        }
        _ => false,
    }
}

/// The disk quota counts every volume of the project by its virtual size: creates, resizes,
/// clones and VMs' root disks are checked, racing creates never exceed it, and after a crash
/// the accounting is rebuilt from the pools.
#[tokio::test(flavor = "multi_thread")]
async fn disk_quota_counts_every_volume_and_racing_creates_never_exceed_it() {
    let mut r = Remote::start();
    let root = r.root();
    let quota = vessel_api::Quota {
        disk_bytes: Some(10 * MIB),
        ..Default::default()
    };
    r.project("d", quota).await;
    let volume = |name: String, size: u64| vessel_api::CreateVolumeRequest {
        name,
        size_bytes: Some(size),
        project: Some("d".into()),
        ..Default::default()
    };
    // Eight racing creates of 3 MiB for 10 MiB: exactly three fit.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, request) = (r.root(), volume(format!("d{i}"), 3 * MIB));
        tasks.push(tokio::spawn(async move {
            client.create_volume("default", &request).await
        }));
    }
    let mut made = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(v) => made.push(v.name),
            Err(e) => assert!(is_disk_quota_error(&e), "{e}"),
        }
    }
    made.sort();
    assert_eq!(made.len(), 3, "{made:?}");
    assert_eq!(
        root.get_project("d").await.unwrap().usage.disk_bytes,
        9 * MIB
    );
    // The refused ones left nothing behind: no file, no entry.
    let pool_dir = r.daemon.data_dir.join("pools/default");
    let mut files: Vec<String> = std::fs::read_dir(&pool_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let expected: Vec<String> = made.iter().map(|n| format!("{n}.qcow2")).collect();
    assert_eq!(files, expected);

    // Growing by 1 MiB fits (10 of 10); growing another is refused and changes nothing.
    let grow = vessel_api::ResizeVolumeRequest {
        size_bytes: 4 * MIB,
        shrink: false,
    };
    root.resize_volume("default", &made[0], &grow)
        .await
        .unwrap();
    let err = root
        .resize_volume("default", &made[1], &grow)
        .await
        .unwrap_err();
    assert!(is_disk_quota_error(&err), "{err}");
    assert!(
        err.to_string()
            .contains("limit 10 MiB (10485760 bytes), in use 10 MiB (10485760 bytes)"),
        "{err}"
    );
    let unchanged = root.get_volume("default", &made[1]).await.unwrap();
    assert_eq!(unchanged.virtual_bytes, 3 * MIB);

    // A clone needs its source's size, linked or not.
    let clone = vessel_api::CloneVolumeRequest {
        name: "dclone".into(),
        linked: true,
    };
    let err = root
        .clone_volume("default", &made[1], &clone)
        .await
        .unwrap_err();
    assert!(is_disk_quota_error(&err), "{err}");
    assert!(root.get_volume("default", "dclone").await.is_err());
    // Deleting makes room; shrinking gives room back.
    root.delete_volume("default", &made[2]).await.unwrap();
    let cloned = root
        .clone_volume("default", &made[1], &clone)
        .await
        .unwrap();
    assert_eq!(cloned.project, "d");
    assert_eq!(
        root.get_project("d").await.unwrap().usage.disk_bytes,
        10 * MIB
    );
    let shrink = vessel_api::ResizeVolumeRequest {
        size_bytes: 2 * MIB,
        shrink: true,
    };
    root.resize_volume("default", &made[0], &shrink)
        .await
        .unwrap();
    assert_eq!(
        root.get_project("d").await.unwrap().usage.disk_bytes,
        8 * MIB
    );

    // A VM's root disk made from an image counts too: an image of 4 MiB does not fit in the
    // 2 MiB left, and the refused create leaves no VM.
    let raw = r.daemon.data_dir.join("img.raw");
    std::fs::write(&raw, vec![0u8; 4 * MIB as usize]).unwrap();
    // Public: a VM of project d may use an image of `default` only when it is.
    let import = vessel_api::ImportImageRequest {
        name: "img".into(),
        source: raw.to_string_lossy().into_owned(),
        public: true,
        ..Default::default()
    };
    root.import_image(&import, true).await.unwrap();
    let vm = vessel_api::CreateVmRequest {
        name: "dvm".into(),
        cpus: 1,
        memory_mib: 64,
        image: Some("img".into()),
        project: Some("d".into()),
        ..Default::default()
    };
    let err = root.create_vm(&vm, true).await.unwrap_err();
    assert!(is_disk_quota_error(&err), "{err}");
    assert!(root.get_vm("dvm").await.is_err());
    assert_eq!(
        root.get_project("d").await.unwrap().usage.disk_bytes,
        8 * MIB
    );
    // An import's size is known once it is done: over the quota, it is refused and deleted.
    let import = vessel_api::ImportVolumeRequest {
        name: "dimport".into(),
        source: raw.to_string_lossy().into_owned(),
        project: Some("d".into()),
        ..Default::default()
    };
    let refused = root.import_volume("default", &import, true).await;
    let err = refused.map(|_| ()).unwrap_err();
    // Found by the import's operation, it keeps its class: 409 quota_exceeded, not a 500.
    assert!(is_disk_quota_error(&err), "{err}");
    assert!(root.get_volume("default", "dimport").await.is_err());
    assert!(!pool_dir.join("dimport.raw").exists());
    // With room for it, the VM's root disk (a linked clone of the image) counts at its virtual
    // size, and deleting the VM gives it back.
    let raised = vessel_api::Quota {
        disk_bytes: Some(12 * MIB),
        ..Default::default()
    };
    root.set_quota("d", &raised).await.unwrap();
    root.create_vm(&vm, true).await.unwrap();
    assert_eq!(
        root.get_project("d").await.unwrap().usage.disk_bytes,
        12 * MIB
    );
    root.delete_vm("dvm", false, true).await.unwrap();
    assert_eq!(
        root.get_project("d").await.unwrap().usage.disk_bytes,
        8 * MIB
    );
    // The image itself is the default project's.
    let default_use = root.get_project("default").await.unwrap().usage.disk_bytes;
    assert_eq!(default_use, 4 * MIB);

    // A crash, and a volume put into the pool by hand meanwhile: at the next start the
    // accounting is rebuilt from the pools (the stray file counts for `default`, leftover
    // reservations go).
    r.daemon.kill9();
    std::fs::write(pool_dir.join("stray.raw"), vec![0u8; 2 * MIB as usize]).unwrap();
    {
        // Reservations a crash left behind: one whose volume was never made, one in a pool
        // that is gone. Neither may count any more.
        let conn = rusqlite::Connection::open(r.daemon.data_dir.join("vessel.db")).unwrap();
        let entry = br#"{"project":"d","virtual_bytes":1048576}"#;
        set_value(&conn, "volprojects/default/ghost", entry);
        set_value(&conn, "volprojects/gonepool/x", entry);
        // And one whose size went wrong (a crash during a resize): the file's header wins.
        let wrong = br#"{"project":"d","virtual_bytes":7340032}"#;
        set_value(&conn, &format!("volprojects/default/{}", made[1]), wrong);
    }
    r.daemon.spawn();
    let root = r.root();
    assert_eq!(
        root.get_project("d").await.unwrap().usage.disk_bytes,
        8 * MIB
    );
    let default_use = root.get_project("default").await.unwrap().usage.disk_bytes;
    assert_eq!(default_use, 6 * MIB);
    // A file put into the pool while the daemon runs is counted from its first growth on.
    std::fs::write(pool_dir.join("late.raw"), vec![0u8; MIB as usize]).unwrap();
    let grow_late = vessel_api::ResizeVolumeRequest {
        size_bytes: 2 * MIB,
        shrink: false,
    };
    root.resize_volume("default", "late", &grow_late)
        .await
        .unwrap();
    let default_use = root.get_project("default").await.unwrap().usage.disk_bytes;
    assert_eq!(default_use, 8 * MIB);
    // A project with volumes cannot be deleted.
    let err = root.delete_project("d").await.unwrap_err();
    assert!(err.to_string().contains("3 volume(s)"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn record_key(seq: u64) -> String {
    vessel_audit::record_key(seq)
}

/// Runs `f` on the store of a fresh copy of `data`, then verifies the copy offline.
fn tamper(data: &Path, public_key: &Path, f: impl FnOnce(&rusqlite::Connection)) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("data");
    copy_dir(data, &copy);
    {
        let conn = rusqlite::Connection::open(copy.join("vessel.db")).unwrap();
        f(&conn);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&copy)
        .arg("--public-key")
        .arg(public_key)
        .output()
        .unwrap();
    std::mem::forget(dir); // keep the copy for a failing assertion's inspection
    out
}

fn get_value(conn: &rusqlite::Connection, key: &str) -> Vec<u8> {
    conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
        row.get(0)
    })
    .unwrap()
}

fn set_value(conn: &rusqlite::Connection, key: &str, value: &[u8]) {
    let n = conn
        .execute(
            "INSERT INTO kv (key, value, create_rev, mod_rev, version) VALUES (?1, ?2, 1, 1, 1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_requests_and_verify_locates_each_tampering() {
    let mut r = Remote::start();
    let token = r.user("erin", vec![grant("*", Role::Admin)]).await;
    let erin = r.client(&token);
    for i in 0..6 {
        erin.create_project(&vessel_api::CreateProjectRequest {
            name: format!("p{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let viewer = r.user("vic", vec![grant("*", Role::Viewer)]).await;
    let denied = r.client(&viewer).delete_project("p0").await.unwrap_err();
    assert!(denied.to_string().contains("project.admin"), "{denied}");

    let list = r.cli(
        &[
            "--socket",
            &r.socket(),
            "audit",
            "list",
            "--identity",
            "erin",
            "-o",
            "json",
        ],
        "",
    );
    let records: Vec<vessel_api::AuditRecord> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(records
        .iter()
        .all(|rec| rec.action == "projects.create" && rec.result == "ok"));
    assert!(
        records[0].target.ends_with("/v1/projects/p0")
            && records[0].source.starts_with("127.0.0.1:")
    );
    let vic = r
        .root()
        .list_audit(&vessel_cli::AuditQuery {
            identity: Some("vic".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(vic.len(), 1);
    assert!(
        vic[0].result.starts_with("denied") && vic[0].action == "projects.delete",
        "{vic:?}"
    );
    let by_action = r.cli(
        &[
            "--socket",
            &r.socket(),
            "audit",
            "list",
            "--action",
            "users.",
            "-o",
            "json",
        ],
        "",
    );
    let by_action: Vec<vessel_api::AuditRecord> =
        serde_json::from_slice(&by_action.stdout).unwrap();
    assert!(
        by_action.len() >= 2
            && by_action
                .iter()
                .all(|rec| rec.action.starts_with("users.") && rec.source == "unix")
    );

    let online = r.cli(&["--socket", &r.socket(), "audit", "verify"], "");
    assert!(online.status.success(), "{}", text(&online.stderr));
    assert!(
        text(&online.stdout).contains("intact"),
        "{}",
        text(&online.stdout)
    );

    // Offline, on copies of the data dir, as an attacker with write access to it would leave it.
    r.daemon.kill9();
    let data: PathBuf = r.daemon.data_dir.clone();
    let public = data.join("audit.pub");
    let clean = tamper(&data, &public, |_| {});
    assert!(clean.status.success(), "{}", text(&clean.stdout));
    let last: u64 = {
        let conn = rusqlite::Connection::open(data.join("vessel.db")).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM kv WHERE key LIKE 'audit/records/%'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert!(last >= 10, "{last}");

    let edited = tamper(&data, &public, |conn| {
        let mut record: serde_json::Value =
            serde_json::from_slice(&get_value(conn, &record_key(4))).unwrap();
        record["identity"] = "mallory".into();
        set_value(conn, &record_key(4), &serde_json::to_vec(&record).unwrap());
    });
    assert_eq!(edited.status.code(), Some(5));
    assert!(
        text(&edited.stdout).contains("record 4 was edited"),
        "{}",
        text(&edited.stdout)
    );

    let deleted = tamper(&data, &public, |conn| {
        conn.execute("DELETE FROM kv WHERE key = ?1", [record_key(6)])
            .unwrap();
    });
    assert_eq!(deleted.status.code(), Some(5));
    assert!(
        text(&deleted.stdout).contains("record 6 was deleted"),
        "{}",
        text(&deleted.stdout)
    );

    let reordered = tamper(&data, &public, |conn| {
        let (a, b) = (
            get_value(conn, &record_key(7)),
            get_value(conn, &record_key(8)),
        );
        set_value(conn, &record_key(7), &b);
        set_value(conn, &record_key(8), &a);
    });
    assert_eq!(reordered.status.code(), Some(5));
    assert!(
        text(&reordered.stdout).contains("records 7 and 8 were swapped"),
        "{}",
        text(&reordered.stdout)
    );

    let inserted = tamper(&data, &public, |conn| {
        for seq in (3..=last).rev() {
            let value = get_value(conn, &record_key(seq));
            set_value(conn, &record_key(seq + 1), &value);
        }
        let two: vessel_audit::AuditRecord =
            serde_json::from_slice(&get_value(conn, &record_key(2))).unwrap();
        let forged = vessel_audit::AuditRecord::chain(
            3,
            vessel_audit::AuditEntry::now(
                "mallory",
                "unix",
                "users.create",
                "/v1/users/mallory",
                "ok",
            ),
            two.hash,
        );
        set_value(conn, &record_key(3), &serde_json::to_vec(&forged).unwrap());
    });
    assert_eq!(inserted.status.code(), Some(5));
    assert!(
        text(&inserted.stdout).contains("inserted at seq 3"),
        "{}",
        text(&inserted.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_oversized_requests_are_refused_audited_and_change_nothing() {
    let r = Remote::start();
    let token = r.user("fay", vec![grant("*", Role::Admin)]).await;
    let cases = [
        (r#"{"name": "x1""#, 400),
        (r#"{"name": "x2", "colour": "red"}"#, 400),
        (r#"{"name": 7}"#, 400),
    ];
    for (body, expected) in cases {
        let (status, answer) = r.raw(Some(&token), "POST", "/v1/projects", body).await;
        assert_eq!(status, expected, "{body}: {answer}");
    }
    let big = format!(r#"{{"name": "x3", "pad": "{}"}}"#, "a".repeat(70 * 1024));
    let (status, _) = r.raw(Some(&token), "POST", "/v1/projects", &big).await;
    assert_eq!(status, 413);
    let (status, _) = r.raw(Some(&token), "GET", "/v1/audit?colour=red", "").await;
    assert_eq!(status, 400);
    let projects = r.root().list_projects().await.unwrap();
    assert_eq!(projects.len(), 1, "{projects:?}");

    // A header block larger than the limit is refused before any handler.
    let request = hyper::Request::builder()
        .method("GET")
        .uri("/v1/vms")
        .header("host", "vessel")
        .header("x-padding", "b".repeat(32 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let refused = r.target(Some(&token)).send(request).await;
    // Either a 431 answer or a closed connection: refused both ways.
    if let Ok(response) = refused {
        assert_eq!(response.status().as_u16(), 431);
    }

    let records = r
        .root()
        .list_audit(&vessel_cli::AuditQuery {
            identity: Some("fay".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 5, "{records:?}");
    assert!(
        records
            .iter()
            .all(|rec| rec.result.starts_with("denied: 4")),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_belong_to_projects_and_callers_see_and_touch_only_theirs() {
    let r = Remote::start();
    let root = r.root();
    r.project("dev", Default::default()).await;
    let volume = |name: &str, project: Option<&str>| vessel_api::CreateVolumeRequest {
        name: name.into(),
        size_bytes: Some(1 << 20),
        project: project.map(str::to_string),
        ..Default::default()
    };
    let dev_vol = root
        .create_volume("default", &volume("devdata", Some("dev")))
        .await
        .unwrap();
    assert_eq!(dev_vol.project, "dev");
    root.create_volume("default", &volume("shared", None))
        .await
        .unwrap();

    let token = r.user("dora", vec![grant("dev", Role::Operator)]).await;
    let dora = r.client(&token);
    let seen: Vec<String> = dora
        .list_volumes("default")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(seen, vec!["devdata".to_string()]);
    // Another project's volume is, to her, missing (404, as for one that does not exist).
    let err = dora.delete_volume("default", "shared").await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Her own project's volume she may resize and delete; a new one goes to dev when she says so.
    dora.create_volume("default", &volume("mine", Some("dev")))
        .await
        .unwrap();
    let err = dora
        .create_volume("default", &volume("notmine", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in project \"default\""), "{err}");
    dora.delete_volume("default", "devdata").await.unwrap();
    let left: Vec<String> = root
        .list_volumes("default")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(left, vec!["mine".to_string(), "shared".to_string()]);
}
