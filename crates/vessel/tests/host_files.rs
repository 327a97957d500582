//! Tenants never reach the host (issue 12): request fields that name host files need
//! `host.files` (or an allow-listed directory, opened beneath it without symlinks or `..`), URL
//! imports reach public addresses only, import errors never quote the source, and images are
//! used across projects only when a host admin made them public. Over real TLS, as an operator.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use vessel_api::Role;
use vessel_auth::host_files::HOST_FIELDS;

use common::remote::{grant, Remote};
use common::{await_boots, guest, guest_vm};

const MIB: u64 = 1024 * 1024;

/// A raw disk image (zeros: not text) of 1 MiB.
fn raw_disk(path: &Path) -> String {
    std::fs::write(path, vec![0u8; MIB as usize]).unwrap();
    path.to_string_lossy().into_owned()
}

async fn vm_names(client: &vessel_cli::Client) -> Vec<String> {
    let vms = client.list_vms().await.unwrap();
    vms.into_iter().map(|v| v.spec.name).collect()
}

/// The request fields the OpenAPI document describes as naming something on the daemon's host
/// (a file, or a URL it fetches), nested ones with dotted names: `(METHOD, path, field)`.
fn described_host_fields(doc: &Value) -> BTreeSet<(String, String, String)> {
    fn walk(doc: &Value, schema: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
            None => schema,
        };
        for alt in ["oneOf", "anyOf", "allOf"] {
            for s in schema[alt].as_array().into_iter().flatten() {
                walk(doc, s, prefix, out);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(doc, items, prefix, out);
        }
        for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
            let field = format!("{prefix}{name}");
            let description = prop["description"].as_str().unwrap_or_default();
            if description.contains("daemon's host") || description.contains("URL") {
                out.push((field.clone(), description.to_string()));
            }
            walk(doc, prop, &format!("{field}."), out);
        }
    }
    let mut found = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") else {
                continue;
            };
            let mut fields = Vec::new();
            walk(doc, schema, "", &mut fields);
            for (field, _) in fields {
                found.insert((method.to_uppercase(), path.clone(), field));
            }
        }
    }
    found
}

/// The request of one host-field row, naming `value` in its field (and little else).
fn request_of(method: &str, template: &str, field: &str, value: &str, n: usize) -> (String, Value) {
    let path = template.replace("{pool}", "default").replace(
        "{name}",
        if template.starts_with("/v1/vms") {
            "edited"
        } else {
            "vol"
        },
    );
    let mut body = match (method, template) {
        ("POST", "/v1/vms") => json!({"name": format!("t{n}"), "cpus": 1, "memory_mib": 64}),
        ("POST", "/v1/images") | ("POST", "/v1/pools/{pool}/imports") => {
            json!({"name": format!("t{n}")})
        }
        ("POST", "/v1/pools") => json!({"name": format!("t{n}")}),
        _ => json!({}),
    };
    body[field] = value.into();
    (path, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_path_field_is_refused_to_an_operator_and_works_for_host_admins() {
    let r = Remote::start();
    let alice = r
        .user("alice", vec![grant("default", Role::Operator)])
        .await;
    let admin = r.user("hostadmin", vec![grant("*", Role::Admin)]).await;
    let root = r.root();
    let dir = tempfile::tempdir().unwrap();
    let g = guest();
    let kernel = g.kernel.to_string_lossy().into_owned();
    let initrd = g.initrd.to_string_lossy().into_owned();
    let disk = raw_disk(&dir.path().join("disk.raw"));
    root.create_vm(&guest_vm("edited"), true).await.unwrap();
    root.create_volume(
        "default",
        &common::volume_request("vol", vessel_api::VolumeFormat::Qcow2, Some(MIB), None),
    )
    .await
    .unwrap();

    // The table covers exactly what the OpenAPI document says names host files or URLs.
    let (status, doc) = r.raw(Some(&alice), "GET", "/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    let described = described_host_fields(&serde_json::from_str(&doc).unwrap());
    let table: BTreeSet<_> = HOST_FIELDS
        .iter()
        .map(|f| {
            (
                f.method.to_string(),
                f.path.to_string(),
                f.field.to_string(),
            )
        })
        .collect();
    assert_eq!(
        described, table,
        "the OpenAPI document and HOST_FIELDS differ"
    );

    // What each field names: a file a host admin may use there.
    let value = |field: &str, template: &str| -> String {
        match (field, template) {
            ("kernel", _) => kernel.clone(),
            ("initrd", _) => initrd.clone(),
            ("disk", _) | ("source", _) => disk.clone(),
            ("path", "/v1/pools") => dir.path().join("pool2").to_string_lossy().into_owned(),
            ("path", _) => dir.path().join("out.qcow2").to_string_lossy().into_owned(),
            other => panic!("no test value for {other:?}: add one"),
        }
    };
    let edited_before = root.get_vm("edited").await.unwrap();
    for (n, f) in HOST_FIELDS.iter().enumerate() {
        let (path, body) = request_of(f.method, f.path, f.field, &value(f.field, f.path), n);
        let (status, answer) = r
            .raw(Some(&alice), f.method, &path, &body.to_string())
            .await;
        assert_eq!(status, 403, "{f:?}: {answer}");
        // Creating pools is host administration anyway: its route refuses first.
        let names = if f.path == "/v1/pools" {
            "pool.admin"
        } else {
            "host.files"
        };
        assert!(answer.contains(names), "{f:?}: {answer}");
    }
    // Nothing was written.
    assert_eq!(vm_names(&root).await, vec!["edited".to_string()]);
    assert_eq!(
        root.get_vm("edited").await.unwrap().spec,
        edited_before.spec
    );
    assert!(root.list_images().await.unwrap().is_empty());
    assert_eq!(root.list_volumes("default").await.unwrap().len(), 1);
    assert!(!dir.path().join("out.qcow2").exists());
    assert!(!dir.path().join("pool2").exists());
    // The audit log has each refusal.
    let records = root
        .list_audit(&vessel_cli::AuditQuery {
            identity: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = records
        .iter()
        .filter(|rec| rec.result.starts_with("denied: 403") && rec.result.contains("host.files"))
        .count();
    assert_eq!(refused, HOST_FIELDS.len() - 1, "{records:#?}");

    // A host admin (admin on *) may name them all.
    for (n, f) in HOST_FIELDS.iter().enumerate() {
        let (path, mut body) = request_of(f.method, f.path, f.field, &value(f.field, f.path), n);
        if f.field == "initrd" {
            body["kernel"] = kernel.clone().into();
        }
        if f.field == "disk" {
            body["machine"] = "q35".into();
        }
        let (status, answer) = r
            .raw(Some(&admin), f.method, &path, &body.to_string())
            .await;
        assert!((200..300).contains(&status), "{f:?}: {status} {answer}");
    }
    assert!(dir.path().join("out.qcow2").exists());
    assert!(dir.path().join("pool2").is_dir());
}

/// A tiny HTTP server on `addr` answering every request with `answer`; counts requests.
fn serve(addr: &str, answer: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = stream.write_all(&answer);
        }
    });
    (local.to_string(), hits)
}

fn ok_with(body: &[u8]) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_imports_of_tenants_reach_only_allowed_addresses_and_errors_quote_nothing() {
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("vessel.toml");
    // 127.0.0.2 stands for "an allowed server": the allow list opens it, loopback stays shut.
    std::fs::write(&file, "import_allow_cidrs = [\"127.0.0.2/32\"]\n").unwrap();
    let r = Remote::start_with(&["--config", file.to_str().unwrap()]);
    let alice = r
        .user("alice", vec![grant("default", Role::Operator)])
        .await;
    let admin = r.user("hostadmin", vec![grant("*", Role::Admin)]).await;
    let (inside, inside_hits) = serve("127.0.0.1:0", ok_with(&[0u8; 4096]));
    let port = inside.rsplit(':').next().unwrap().to_string();
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/d.raw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (allowed, allowed_hits) = serve("127.0.0.2:0", redirect.into_bytes());

    let import = |token: &str, name: &str, url: String| {
        let body = json!({"name": name, "source": url}).to_string();
        let token = token.to_string();
        let r = &r;
        async move { r.raw(Some(&token), "POST", "/v1/images", &body).await }
    };
    for (url, kind) in [
        (format!("http://127.0.0.1:{port}/d.raw"), "loopback"),
        (format!("http://[::1]:{port}/d.raw"), "loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/d.raw"),
            "loopback",
        ),
        // Refused before any connection is tried: no packet leaves the host.
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "link-local",
        ),
        ("http://10.0.0.1/d.raw".into(), "private"),
    ] {
        let (status, answer) = import(&alice, "x", url.clone()).await;
        assert_eq!(status, 400, "{url}: {answer}");
        assert!(answer.contains(kind), "{url}: {answer}");
    }
    // The same on the volume import route.
    let body = json!({"name": "v", "source": format!("http://127.0.0.1:{port}/d.raw")});
    let (status, answer) = r
        .raw(
            Some(&alice),
            "POST",
            "/v1/pools/default/imports",
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    // A host name is checked at every address it resolves to.
    let (status, answer) = import(&alice, "x", format!("http://localhost:{port}/d.raw")).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("loopback"), "{answer}");
    // An allowed server that redirects to loopback: the hop is refused.
    let (status, answer) = import(&alice, "x", format!("http://{allowed}/d.raw")).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("loopback"), "{answer}");
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        inside_hits.load(Ordering::SeqCst),
        0,
        "a refused address was reached"
    );
    assert!(r.root().list_images().await.unwrap().is_empty());
    // A host admin may import from anywhere.
    let (status, answer) =
        import(&admin, "fromloop", format!("http://127.0.0.1:{port}/d.raw")).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(inside_hits.load(Ordering::SeqCst), 1);

    // Import errors say what the source is, never what it says.
    let dir = tempfile::tempdir().unwrap();
    let secret = "root:*:20228:0:99999:7:::SECRET-MARK\n".repeat(20);
    let text_file = dir.path().join("shadow");
    std::fs::write(&text_file, &secret).unwrap();
    let html = format!("<!DOCTYPE html><html><body>SECRET-MARK {secret}</body></html>");
    let html_file = dir.path().join("page.raw");
    std::fs::write(&html_file, &html).unwrap();
    let (page, _) = serve("127.0.0.1:0", ok_with(html.as_bytes()));
    for (source, says) in [
        (text_file.to_string_lossy().into_owned(), "text"),
        (html_file.to_string_lossy().into_owned(), "HTML"),
        (format!("http://{page}/page"), "HTML"),
    ] {
        let (status, answer) = import(&admin, "bad", source.clone()).await;
        assert!(!(200..300).contains(&status), "{source}: {answer}");
        assert!(answer.contains(says), "{source}: {answer}");
        assert!(
            !answer.contains("SECRET-MARK") && !answer.contains("20228"),
            "{source}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listed_dirs_open_exactly_their_files_without_symlinks_or_dotdot() {
    let d = tempfile::tempdir().unwrap();
    let (kernels, imports, exports) = (
        d.path().join("kernels"),
        d.path().join("imports"),
        d.path().join("exports"),
    );
    for dir in [&kernels, &imports, &exports] {
        std::fs::create_dir(dir).unwrap();
    }
    let file = d.path().join("vessel.toml");
    std::fs::write(
        &file,
        format!(
            "kernel_dirs = [{:?}]\nimport_dirs = [{:?}]\nexport_dirs = [{:?}]\n",
            kernels, imports, exports
        ),
    )
    .unwrap();
    let r = Remote::start_with(&["--config", file.to_str().unwrap()]);
    let alice = r
        .user("alice", vec![grant("default", Role::Operator)])
        .await;
    let root = r.root();
    let g = guest();
    std::fs::copy(&g.kernel, kernels.join("vmlinuz")).unwrap();
    std::fs::copy(&g.initrd, kernels.join("initrd")).unwrap();
    let secret = d.path().join("secret");
    std::fs::write(&secret, vec![7u8; 4096]).unwrap();
    std::os::unix::fs::symlink(&secret, kernels.join("out")).unwrap();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let vm = |name: &str, kernel: String| {
        json!({"name": name, "cpus": 1, "memory_mib": 128, "kernel": kernel,
               "initrd": path(&kernels.join("initrd")), "cmdline": "quiet"})
        .to_string()
    };
    let post = |path: String, body: String| {
        let (r, alice) = (&r, alice.clone());
        async move { r.raw(Some(&alice), "POST", &path, &body).await }
    };

    // Inside: allowed, and the guest boots from the files the daemon opened.
    let (status, answer) = post("/v1/vms".into(), vm("k1", path(&kernels.join("vmlinuz")))).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = post("/v1/vms/k1/start".into(), String::new()).await;
    assert_eq!(status, 200, "{answer}");
    await_boots(&root, "k1", 1).await;
    // A symlink pointing out, and `..`, are refused.
    for kernel in [
        path(&kernels.join("out")),
        format!("{}/../secret", path(&kernels)),
    ] {
        let (status, answer) = post("/v1/vms".into(), vm("k2", kernel.clone())).await;
        assert_eq!(status, 403, "{kernel}: {answer}");
        assert!(answer.contains("host.files"), "{answer}");
    }
    // A file swapped for a symlink after the check: the start refuses it (a followed link would
    // boot, since it points at a real kernel).
    std::fs::copy(&g.kernel, kernels.join("swap")).unwrap();
    let (status, answer) = post("/v1/vms".into(), vm("k3", path(&kernels.join("swap")))).await;
    assert_eq!(status, 201, "{answer}");
    std::fs::remove_file(kernels.join("swap")).unwrap();
    std::os::unix::fs::symlink(&g.kernel, kernels.join("swap")).unwrap();
    let (status, answer) = post("/v1/vms/k3/start".into(), String::new()).await;
    assert!(!(200..300).contains(&status), "{answer}");
    assert!(answer.contains("kernel"), "{answer}");
    assert!(r.daemon.qemu_pids_of("k3").is_empty());

    // Imports: a file inside; not through a symlink or `..`.
    raw_disk(&imports.join("disk.raw"));
    std::os::unix::fs::symlink(&secret, imports.join("link.raw")).unwrap();
    let import = |name: &str, source: String| json!({"name": name, "source": source}).to_string();
    let (status, answer) = post(
        "/v1/images".into(),
        import("in", path(&imports.join("disk.raw"))),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    for source in [
        path(&imports.join("link.raw")),
        format!("{}/../secret", path(&imports)),
    ] {
        let (status, answer) = post("/v1/images".into(), import("out", source.clone())).await;
        assert_eq!(status, 403, "{source}: {answer}");
    }

    // Exports: a new file inside; never onto a symlink, never out through `..`.
    root.create_volume(
        "default",
        &common::volume_request("vol", vessel_api::VolumeFormat::Qcow2, Some(MIB), None),
    )
    .await
    .unwrap();
    std::os::unix::fs::symlink(&secret, exports.join("link.qcow2")).unwrap();
    let export = |p: String| json!({"path": p}).to_string();
    let url = "/v1/pools/default/volumes/vol/export".to_string();
    let (status, answer) = post(url.clone(), export(path(&exports.join("new.qcow2")))).await;
    assert_eq!(status, 200, "{answer}");
    assert!(exports.join("new.qcow2").is_file());
    for dest in [
        path(&exports.join("link.qcow2")),
        format!("{}/../escaped.qcow2", path(&exports)),
    ] {
        let body = json!({"path": dest, "overwrite": true}).to_string();
        let (status, answer) = post(url.clone(), body).await;
        assert_eq!(status, 403, "{dest}: {answer}");
    }
    assert_eq!(std::fs::read(&secret).unwrap(), vec![7u8; 4096]);
    assert!(!d.path().join("escaped.qcow2").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_boots_a_public_kernel_and_cannot_use_another_projects_images() {
    let r = Remote::start();
    r.project("p1", Default::default()).await;
    r.project("p2", Default::default()).await;
    let alice = r.user("alice", vec![grant("p1", Role::Operator)]).await;
    let bob = r
        .user(
            "bob",
            vec![grant("p1", Role::Operator), grant("p2", Role::Viewer)],
        )
        .await;
    let root = r.root();
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let import =
        |name: &str, source: &Path, kind: vessel_api::ImageKind, project: &str, public: bool| {
            vessel_api::ImportImageRequest {
                name: name.into(),
                source: source.to_string_lossy().into_owned(),
                kind,
                public,
                project: Some(project.into()),
                ..Default::default()
            }
        };
    use vessel_api::ImageKind::{Disk, Initrd, Kernel};
    for request in [
        import("k", &g.kernel, Kernel, "default", true),
        import("i", &g.initrd, Initrd, "default", true),
        import("p2k", &g.kernel, Kernel, "p2", false),
        import(
            "p2img",
            Path::new(&raw_disk(&dir.path().join("d.raw"))),
            Disk,
            "p2",
            false,
        ),
    ] {
        root.import_image(&request, true).await.unwrap();
    }
    let post = |token: &str, path: &str, body: Value| {
        let (r, token, path) = (&r, token.to_string(), path.to_string());
        async move { r.raw(Some(&token), "POST", &path, &body.to_string()).await }
    };
    let vm = |name: &str| json!({"name": name, "cpus": 1, "memory_mib": 128, "project": "p1", "cmdline": "quiet"});

    // A public kernel and initrd: alice boots them without naming any host file.
    let mut body = vm("a1");
    body["kernel_image"] = "k".into();
    body["initrd_image"] = "i".into();
    body["start"] = true.into();
    let (status, answer) = post(&alice, "/v1/vms", body).await;
    assert_eq!(status, 201, "{answer}");
    await_boots(&root, "a1", 1).await;
    // Public images are listed for her, and only host admins delete or make them.
    let (_, listed) = r.raw(Some(&alice), "GET", "/v1/images", "").await;
    let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&listed)
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["i".to_string(), "k".to_string()]);
    let (status, _) = r.raw(Some(&alice), "DELETE", "/v1/images/k", "").await;
    assert_eq!(status, 403);
    let (status, answer) = post(
        &alice,
        "/v1/images",
        json!({"name": "mine", "source": "https://example.com/x.raw", "project": "p1", "public": true}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("host.admin"), "{answer}");
    // A kernel a VM boots with is not deleted under it.
    let err = root.delete_image("k").await.unwrap_err();
    assert!(err.to_string().contains("a1"), "{err}");

    // Another project's images: 404 to who cannot read that project, 403 to who can.
    let mut with_kernel = vm("a2");
    with_kernel["kernel_image"] = "p2k".into();
    let mut with_image = vm("a3");
    with_image["image"] = "p2img".into();
    for body in [with_kernel.clone(), with_image.clone()] {
        let (status, answer) = post(&alice, "/v1/vms", body).await;
        assert_eq!(status, 404, "{answer}");
        assert!(!answer.contains("p2\""), "{answer}");
        let (status, answer) = post(&bob, "/v1/vms", with_image.clone()).await;
        assert_eq!(status, 403, "{answer}");
    }
    assert_eq!(vm_names(&root).await, vec!["a1".to_string()]);
    assert!(root.get_volume("default", "a3-root").await.is_err());
}
