//! Images: imported from files and URLs (with digests, progress and cancellation), VMs made
//! from them as linked or encrypted full clones, and volumes exported and imported back. Real
//! qemu-img, real guests, a real HTTP server on loopback.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vessel_api::{
    CreateVmRequest, ExportVolumeRequest, ImportImageRequest, ImportVolumeRequest, OperationStatus,
    StopVmRequest,
};
use vessel_cli::{Client, Outcome, VmAction};

const MIB: usize = 1024 * 1024;
const IMAGE_MARK: &[u8] = b"IMAGE-MARK-7";

/// A 16 MiB raw image with a marker at its start.
fn raw_image(dir: &Path) -> PathBuf {
    let mut bytes = vec![0u8; 16 * MIB];
    bytes[..IMAGE_MARK.len()].copy_from_slice(IMAGE_MARK);
    let path = dir.join("base.raw");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Hidden temporary files in a pool: an import that failed must leave none.
fn temp_files(pool: &Path) -> Vec<String> {
    std::fs::read_dir(pool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

fn import(name: &str, source: &Path, sha256: Option<String>) -> ImportImageRequest {
    ImportImageRequest {
        name: name.into(),
        source: source.to_string_lossy().into_owned(),
        sha256,
        ..Default::default()
    }
}

async fn import_ok(client: &Client, request: &ImportImageRequest) -> vessel_api::Image {
    match client.import_image(request, true).await {
        Ok(Outcome::Done(image)) => image,
        other => panic!("import {}: {other:?}", request.name),
    }
}

fn vm_from_image(name: &str, image: &str) -> CreateVmRequest {
    CreateVmRequest {
        image: Some(image.into()),
        ..guest_vm(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_from_an_image_is_a_linked_clone_that_leaves_the_image_unchanged() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let dir = tempfile::tempdir().unwrap();
    let source = raw_image(dir.path());
    let digest = sha256_of(&source);
    let pool_dir = daemon.data_dir.join("pools/default");

    let wrong = client
        .import_image(&import("base", &source, Some("0".repeat(64))), true)
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains(&digest),
        "names the real digest: {wrong}"
    );
    assert!(client.list_images().await.unwrap().is_empty());
    assert!(
        temp_files(&pool_dir).is_empty(),
        "{:?}",
        temp_files(&pool_dir)
    );

    let image = import_ok(
        &client,
        &import("base", &source, Some(digest.to_uppercase())),
    )
    .await;
    assert_eq!(
        (image.sha256.as_str(), image.virtual_bytes),
        (digest.as_str(), 16 * MIB as u64)
    );
    let image_file = pool_dir.join("base.raw");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&image_file).unwrap().permissions().mode() & 0o777,
        0o444,
        "images are read-only"
    );

    create(&client, &vm_from_image("clone1", "base")).await;
    let root = client.get_volume("default", "clone1-root").await.unwrap();
    assert_eq!(root.backing_volume.as_deref(), Some("base"));
    assert_eq!(root.used_by, vec!["clone1".to_string()]);
    act(&client, "clone1", VmAction::Start).await;
    await_console(&client, "clone1", "VESSEL-GUEST-READY", 1).await;
    // The clone shows the image's data; the guest's writes go to the clone only.
    run_in_guest(&client, "clone1", "head -c 12 /dev/sda | tr A-Z a-z; echo").await;
    await_console(&client, "clone1", "image-mark-7", 1).await;
    run_in_guest(
        &client,
        "clone1",
        "echo CLONE-WROTE >/dev/sda; sync; echo synced-$((3+4))",
    )
    .await;
    await_console(&client, "clone1", "synced-7", 1).await;
    act(&client, "clone1", VmAction::Stop(StopVmRequest::default())).await;
    assert_eq!(sha256_of(&image_file), digest, "the image is unchanged");

    let refused = client.delete_image("base").await.unwrap_err();
    assert!(refused.to_string().contains("clone1-root"), "{refused}");
    let refused = client.delete_volume("default", "base").await.unwrap_err();
    assert!(
        refused.to_string().contains("vessel image delete"),
        "{refused}"
    );
    // Deleting the VM deletes the root disk made for it; then the image can go.
    client.delete_vm("clone1", false, true).await.unwrap();
    assert!(client.get_volume("default", "clone1-root").await.is_err());
    client.delete_image("base").await.unwrap();
    assert!(!image_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_root_disk_is_a_full_copy_the_guest_reads() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let dir = tempfile::tempdir().unwrap();
    import_ok(&client, &import("base", &raw_image(dir.path()), None)).await;
    let request = CreateVmRequest {
        encrypted: true,
        disk_size_bytes: Some(32 * MIB as u64),
        ..vm_from_image("sealed1", "base")
    };
    create(&client, &request).await;
    let root = client.get_volume("default", "sealed1-root").await.unwrap();
    assert!(root.encrypted && root.backing_volume.is_none());
    assert_eq!(root.virtual_bytes, 32 * MIB as u64);
    let raw = std::fs::read(&root.path).unwrap();
    assert!(!raw.windows(IMAGE_MARK.len()).any(|w| w == IMAGE_MARK));
    act(&client, "sealed1", VmAction::Start).await;
    let console = await_console(&client, "sealed1", "VESSEL-GUEST-READY", 1).await;
    assert!(console.contains("sda:32768"), "{console}");
    run_in_guest(&client, "sealed1", "head -c 12 /dev/sda | tr A-Z a-z; echo").await;
    await_console(&client, "sealed1", "image-mark-7", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_imports_are_refused_and_leave_nothing_behind() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = daemon.data_dir.join("pools/default");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a disk image\n".repeat(100)).unwrap();
    let err = client
        .import_image(&import("notes", &text, None), true)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a disk image") || err.to_string().contains("text"),
        "{err}"
    );

    // A qcow2 cut in the middle.
    let qcow2 = dir.path().join("cut.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("64M")
        .status()
        .unwrap();
    assert!(status.success());
    std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 8M"])
        .arg(&qcow2)
        .output()
        .unwrap();
    let full = std::fs::read(&qcow2).unwrap();
    std::fs::write(&qcow2, &full[..full.len() / 2]).unwrap();
    let err = client
        .import_image(&import("cut", &qcow2, None), true)
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());

    let err = client
        .import_image(&import("../evil", &text, None), true)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("'/'") || err.to_string().contains(".."),
        "{err}"
    );
    let relative = ImportImageRequest {
        source: "relative/path.qcow2".into(),
        ..import("rel", &text, None)
    };
    let err = client.import_image(&relative, true).await.unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");

    // A URL that answers 404.
    let server = HttpServer::start(Serve::NotFound).await;
    let err = client
        .import_image(
            &ImportImageRequest {
                source: server.url(),
                ..import("web", &text, None)
            },
            true,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");

    assert!(client.list_images().await.unwrap().is_empty());
    assert!(client.list_volumes("default").await.unwrap().is_empty());
    assert!(
        temp_files(&pool_dir).is_empty(),
        "{:?}",
        temp_files(&pool_dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_can_be_cancelled_and_leaves_nothing() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let pool_dir = daemon.data_dir.join("pools/default");
    let server = HttpServer::start(Serve::Stall).await;
    let request = ImportImageRequest {
        name: "slow".into(),
        source: server.url(),
        sha256: None,
        ..Default::default()
    };
    let op = match client.import_image(&request, false).await.unwrap() {
        Outcome::Accepted(accepted) => accepted.operation,
        Outcome::Done(_) => panic!("wait=false returned the result"),
    };
    // Cancel once the server has sent the first part (the import is then mid-way).
    server.first_part_sent().await;
    let cancelled = client.cancel_operation(&op.id).await.unwrap();
    assert_eq!(cancelled.status, OperationStatus::Cancelled);
    assert!(client.list_images().await.unwrap().is_empty());
    assert!(
        temp_files(&pool_dir).is_empty(),
        "{:?}",
        temp_files(&pool_dir)
    );
    let again = client.cancel_operation(&op.id).await.unwrap_err();
    assert!(again.to_string().contains("already"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_volume_imports_back_with_the_same_bytes() {
    let daemon = Daemon::start();
    let client = daemon.client();
    let dir = tempfile::tempdir().unwrap();
    let source = raw_image(dir.path());
    let imported = match client
        .import_volume(
            "default",
            &ImportVolumeRequest {
                name: "orig".into(),
                source: source.to_string_lossy().into_owned(),
                sha256: None,
                format: Some(vessel_api::VolumeFormat::Qcow2),
                project: None,
            },
            true,
        )
        .await
    {
        Ok(Outcome::Done(volume)) => volume,
        other => panic!("import volume: {other:?}"),
    };
    assert_eq!(imported.format, vessel_api::VolumeFormat::Qcow2);
    let file = dir.path().join("orig-export.qcow2");
    let export = ExportVolumeRequest {
        path: file.to_string_lossy().into_owned(),
        compress: true,
        overwrite: false,
    };
    let exported = match client.export_volume("default", "orig", &export, true).await {
        Ok(Outcome::Done(exported)) => exported,
        other => panic!("export: {other:?}"),
    };
    assert_eq!(exported.sha256, sha256_of(&file));
    let refused = client
        .export_volume("default", "orig", &export, true)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("exists"), "{refused}");
    let back = match client
        .import_volume(
            "default",
            &ImportVolumeRequest {
                name: "back".into(),
                source: exported.path.clone(),
                sha256: Some(exported.sha256.clone()),
                format: None,
                project: None,
            },
            true,
        )
        .await
    {
        Ok(Outcome::Done(volume)) => volume,
        other => panic!("import back: {other:?}"),
    };
    let compare = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&source)
        .arg(&back.path)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "the round trip changed the data: {}",
        String::from_utf8_lossy(&compare.stdout)
    );
}

/// What the test HTTP server does with every request.
#[derive(Clone, Copy)]
enum Serve {
    NotFound,
    /// Promises 64 MiB, sends 1 MiB, then waits forever.
    Stall,
}

struct HttpServer {
    addr: std::net::SocketAddr,
    first_part: std::sync::Arc<tokio::sync::Notify>,
}

impl HttpServer {
    async fn start(serve: Serve) -> HttpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let first_part = std::sync::Arc::new(tokio::sync::Notify::new());
        let notify = first_part.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let notify = notify.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    match serve {
                        Serve::NotFound => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found")
                                .await;
                        }
                        Serve::Stall => {
                            let head =
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 64 * MIB);
                            let _ = socket.write_all(head.as_bytes()).await;
                            let _ = socket.write_all(&vec![0x5a; MIB]).await;
                            let _ = socket.flush().await;
                            notify.notify_one();
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        HttpServer { addr, first_part }
    }

    fn url(&self) -> String {
        format!("http://{}/image.qcow2", self.addr)
    }

    async fn first_part_sent(&self) {
        self.first_part.notified().await;
    }
}
