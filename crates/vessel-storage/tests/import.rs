//! Image import and volume export against the real qemu-img and qemu-io, with a local HTTP
//! server for URL imports.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vessel_storage::{
    CancelToken, CloneMode, DirPool, ExportOptions, Format, ImportOptions, ImportPhase,
    ImportProgress, ImportSource, PoolError, StoragePool, VolumeKey, VolumeSpec,
};

const MIB: u64 = 1 << 20;

async fn pool_in(dir: &Path) -> DirPool {
    DirPool::open("default", dir, qemu_img()).await.unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_of(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

fn qemu_img_cmd(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether two images hold the same guest-visible bytes (`qemu-img compare`).
fn same_guest_bytes(a: &Path, fa: Format, b: &Path, fb: Format) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-f", fa.as_str(), "-F", fb.as_str()])
        .arg(a)
        .arg(b)
        .output()
        .unwrap()
        .status
        .success()
}

/// A raw image of `size` bytes with data at a few places and holes elsewhere.
fn sparse_raw(path: &Path, size: u64) {
    qemu_img_cmd(&[
        "create",
        "-q",
        "-f",
        "raw",
        path.to_str().unwrap(),
        &size.to_string(),
    ]);
    guest_write(path, Format::Raw, 0xab, 0, 64 * 1024);
    guest_write(path, Format::Raw, 0xcd, size / 2, 128 * 1024);
    guest_write(path, Format::Raw, 0xef, size - 4096, 4096);
}

/// A qcow2 image of `size` bytes with some data.
fn qcow2_with_data(path: &Path, size: u64) {
    qemu_img_cmd(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path.to_str().unwrap(),
        &size.to_string(),
    ]);
    guest_write(path, Format::Qcow2, 0x11, 0, MIB);
    guest_write(path, Format::Qcow2, 0x22, size / 2, 2 * MIB);
    guest_write(path, Format::Qcow2, 0x33, size - MIB, MIB);
}

fn temp_files(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|f| f.starts_with(".vessel-tmp"))
        .collect()
}

fn file(path: &Path) -> ImportSource {
    ImportSource::File(path.to_path_buf())
}

/// Imports with default options, recording progress.
async fn import(
    pool: &DirPool,
    name: &str,
    source: ImportSource,
    opts: &ImportOptions,
) -> (
    Result<vessel_storage::ImportedVolume, PoolError>,
    Vec<ImportProgress>,
) {
    let mut seen = Vec::new();
    let result = pool
        .import_volume(name, source, opts, &mut |p| seen.push(p))
        .await;
    (result, seen)
}

fn invalid_request(result: Result<impl std::fmt::Debug, PoolError>) -> String {
    match result {
        Err(PoolError::InvalidRequest(message)) => message,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

// ---- a small HTTP/1.1 server -------------------------------------------------------------------

#[derive(Clone)]
enum Reply {
    /// 200 with Content-Length and the whole body.
    Ok(Arc<Vec<u8>>),
    /// 200 without Content-Length (the body ends when the connection closes).
    OkNoLength(Arc<Vec<u8>>),
    /// Any status with a text body.
    Status(u16, &'static str, String),
    /// 200 announcing the whole body, sending the first `sent` bytes, then closing.
    Cut(Arc<Vec<u8>>, usize),
    /// 200 announcing the whole body, sending the first `sent` bytes, then nothing more while
    /// the connection stays open.
    Stall(Arc<Vec<u8>>, usize),
    /// 302 to another path of this server.
    Redirect(&'static str),
}

struct Server {
    base: String,
}

impl Server {
    async fn start(routes: HashMap<&'static str, Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes = Arc::new(routes);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, routes.clone()));
            }
        });
        Server { base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn serve(mut stream: tokio::net::TcpStream, routes: Arc<HashMap<&'static str, Reply>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let reply = routes.get(path.as_str()).cloned().unwrap_or(Reply::Status(
        404,
        "Not Found",
        "<html><body>404 Not Found</body></html>".to_string(),
    ));
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    };
    let octets = "Content-Type: application/octet-stream\r\n";
    let _ = match reply {
        Reply::Ok(body) => {
            let h = head(
                "200 OK",
                &format!("{octets}Content-Length: {}\r\n", body.len()),
            );
            write_all(&mut stream, &[&h, &body]).await
        }
        Reply::OkNoLength(body) => write_all(&mut stream, &[&head("200 OK", octets), &body]).await,
        Reply::Status(code, reason, body) => {
            let h = head(
                &format!("{code} {reason}"),
                &format!(
                    "Content-Type: text/html\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            );
            write_all(&mut stream, &[&h, body.as_bytes()]).await
        }
        Reply::Cut(body, sent) => {
            let h = head(
                "200 OK",
                &format!("{octets}Content-Length: {}\r\n", body.len()),
            );
            write_all(&mut stream, &[&h, &body[..sent]]).await
        }
        Reply::Stall(body, sent) => {
            let h = head(
                "200 OK",
                &format!("{octets}Content-Length: {}\r\n", body.len()),
            );
            let r = write_all(&mut stream, &[&h, &body[..sent]]).await;
            tokio::time::sleep(Duration::from_secs(600)).await;
            r
        }
        Reply::Redirect(to) => {
            let h = head(
                "302 Found",
                &format!("Location: {to}\r\nContent-Length: 0\r\n"),
            );
            write_all(&mut stream, &[&h]).await
        }
    };
    let _ = stream.shutdown().await;
}

async fn write_all(stream: &mut tokio::net::TcpStream, parts: &[&[u8]]) -> std::io::Result<()> {
    for part in parts {
        stream.write_all(part).await?;
    }
    stream.flush().await
}

/// Bytes of a raw disk image with data all over (no zero block), `len` bytes.
fn busy_disk(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 4096) % 255) as u8 + 1)
        .collect()
}

// ---- file imports ------------------------------------------------------------------------------

#[tokio::test]
async fn a_sparse_raw_file_is_imported_sparse_with_its_digest() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("disk.img");
    sparse_raw(&src, 256 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;

    let (result, seen) = import(&pool, "debian", file(&src), &ImportOptions::default()).await;
    let imported = result.unwrap();
    assert_eq!(imported.sha256, sha256_of(&src));
    assert_eq!(imported.source_bytes, 256 * MIB);
    assert_eq!(imported.info.format, Format::Raw);
    assert_eq!(imported.info.virtual_size, 256 * MIB);
    assert!(!imported.info.read_only);
    assert!(
        imported.info.allocated_size < 4 * MIB,
        "zero blocks were written: {} bytes allocated",
        imported.info.allocated_size
    );
    assert!(same_guest_bytes(
        &src,
        Format::Raw,
        &imported.info.path,
        Format::Raw
    ));
    assert_eq!(files_in(dir.path()), ["debian.raw"]);

    // Progress: copying up to the whole file, then verifying; never backwards within a phase.
    assert_eq!(seen.first().unwrap().phase, ImportPhase::Copying);
    let copied = seen
        .iter()
        .rfind(|p| p.phase == ImportPhase::Copying)
        .unwrap();
    assert_eq!((copied.done, copied.total), (256 * MIB, Some(256 * MIB)));
    assert_eq!(seen.last().unwrap().phase, ImportPhase::Verifying);
    for pair in seen.windows(2) {
        if pair[0].phase == pair[1].phase {
            assert!(pair[0].done <= pair[1].done, "{pair:?}");
        }
    }
}

#[tokio::test]
async fn a_qcow2_file_is_imported_as_is_or_converted() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("cloud.qcow2");
    qcow2_with_data(&src, 64 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;

    let kept = import(&pool, "kept", file(&src), &ImportOptions::default())
        .await
        .0
        .unwrap();
    assert_eq!(kept.info.format, Format::Qcow2);
    assert_eq!(kept.info.virtual_size, 64 * MIB);
    assert_eq!(kept.sha256, sha256_of(&src));
    // Kept byte for byte.
    assert_eq!(sha256_of(&kept.info.path), kept.sha256);

    let mut opts = ImportOptions::default();
    opts.format = Some(Format::Raw);
    let (result, seen) = import(&pool, "flat", file(&src), &opts).await;
    let flat = result.unwrap();
    assert_eq!(flat.info.format, Format::Raw);
    assert!(
        flat.info.allocated_size < 16 * MIB,
        "the conversion is sparse"
    );
    assert!(same_guest_bytes(
        &src,
        Format::Qcow2,
        &flat.info.path,
        Format::Raw
    ));
    assert!(seen.iter().any(|p| p.phase == ImportPhase::Converting));

    // And back: raw into qcow2.
    opts.format = Some(Format::Qcow2);
    let round = import(&pool, "round", file(&flat.info.path), &opts)
        .await
        .0
        .unwrap();
    assert_eq!(round.info.format, Format::Qcow2);
    assert!(same_guest_bytes(
        &src,
        Format::Qcow2,
        &round.info.path,
        Format::Qcow2
    ));
    assert_eq!(
        files_in(dir.path()),
        ["flat.raw", "kept.qcow2", "round.qcow2"]
    );
}

#[tokio::test]
async fn the_expected_digest_is_checked_in_any_case() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("disk.img");
    sparse_raw(&src, 8 * MIB);
    let digest = sha256_of(&src);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;

    let mut opts = ImportOptions::default();
    opts.expected_sha256 = Some(digest.to_ascii_uppercase());
    import(&pool, "good", file(&src), &opts).await.0.unwrap();

    let wrong = "0".repeat(64);
    opts.expected_sha256 = Some(wrong.clone());
    let message = invalid_request(import(&pool, "bad", file(&src), &opts).await.0);
    assert!(
        message.contains(&digest) && message.contains(&wrong),
        "{message}"
    );
    assert!(message.contains("nothing was imported"), "{message}");

    opts.expected_sha256 = Some("abc123".to_string());
    let message = invalid_request(import(&pool, "bad", file(&src), &opts).await.0);
    assert!(message.contains("64 hexadecimal digits"), "{message}");

    assert_eq!(files_in(dir.path()), ["good.raw"]);
}

#[tokio::test]
async fn files_that_are_not_images_are_refused() {
    let src_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;

    // Text of exactly 1024 bytes: a whole number of sectors, refused as text.
    let text = src_dir.path().join("notes.img");
    let mut body = "<html><body>Please log in to download this image</body></html>\n".repeat(20);
    body.truncate(1023);
    body.push('\n');
    std::fs::write(&text, &body).unwrap();
    let message = invalid_request(
        import(&pool, "t", file(&text), &ImportOptions::default())
            .await
            .0,
    );
    // Said what it is, never quoted (the caller may not be allowed to read the source).
    assert!(
        message.contains("an HTML page") && !message.contains("log in"),
        "{message}"
    );

    // Binary but not a whole number of sectors.
    let odd = src_dir.path().join("odd.img");
    std::fs::write(&odd, [0u8, 1, 2, 3, 0xff].repeat(100)).unwrap();
    let message = invalid_request(
        import(&pool, "o", file(&odd), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("multiple of 512"), "{message}");

    // Other formats are named, with a way to convert them.
    let vmdk = src_dir.path().join("disk.vmdk");
    qemu_img_cmd(&["create", "-q", "-f", "vmdk", vmdk.to_str().unwrap(), "16M"]);
    let message = invalid_request(
        import(&pool, "v", file(&vmdk), &ImportOptions::default())
            .await
            .0,
    );
    assert!(
        message.contains("VMDK") && message.contains("qemu-img convert"),
        "{message}"
    );

    let empty = src_dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let message = invalid_request(
        import(&pool, "e", file(&empty), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("empty"), "{message}");

    let missing = src_dir.path().join("missing.img");
    let message = invalid_request(
        import(&pool, "m", file(&missing), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("does not exist"), "{message}");

    let message = invalid_request(
        import(&pool, "d", file(src_dir.path()), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("not a regular file"), "{message}");

    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[tokio::test]
async fn an_iso_is_a_raw_image() {
    // An ISO 9660 image: a zero system area, then "CD001" at 32769.
    let src_dir = tempfile::tempdir().unwrap();
    let iso = src_dir.path().join("seed.iso");
    let mut data = vec![0u8; 64 * 2048];
    data[32768] = 1;
    data[32769..32774].copy_from_slice(b"CD001");
    std::fs::write(&iso, &data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let imported = import(&pool, "seed", file(&iso), &ImportOptions::default())
        .await
        .0
        .unwrap();
    assert_eq!(imported.info.format, Format::Raw);
    assert_eq!(std::fs::read(&imported.info.path).unwrap(), data);
}

#[tokio::test]
async fn a_truncated_qcow2_is_refused() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("cut.qcow2");
    qcow2_with_data(&src, 64 * MIB);
    let len = std::fs::metadata(&src).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let message = invalid_request(
        import(&pool, "cut", file(&src), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("truncated"), "{message}");
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[tokio::test]
async fn a_qcow2_with_a_backing_file_is_refused() {
    let src_dir = tempfile::tempdir().unwrap();
    let base = src_dir.path().join("base.raw");
    sparse_raw(&base, 8 * MIB);
    let overlay = src_dir.path().join("overlay.qcow2");
    // The backing file could as well be /etc/shadow: the import must never open it.
    qemu_img_cmd(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        overlay.to_str().unwrap(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let message = invalid_request(
        import(&pool, "o", file(&overlay), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("backing file"), "{message}");

    // Nor may its data live in another file.
    let external = src_dir.path().join("external.qcow2");
    let data = src_dir.path().join("external.data");
    qemu_img_cmd(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", data.display()),
        external.to_str().unwrap(),
        "8M",
    ]);
    let message = invalid_request(
        import(&pool, "x", file(&external), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("external data file"), "{message}");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn an_encrypted_qcow2_is_refused() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("secret.qcow2");
    let key = VolumeKey::generate().unwrap();
    qemu_img()
        .create_encrypted(&src, Format::Qcow2, 8 * MIB, &key)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let message = invalid_request(
        import(&pool, "s", file(&src), &ImportOptions::default())
            .await
            .0,
    );
    assert!(message.contains("encrypted"), "{message}");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn a_taken_name_is_refused_before_copying() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("disk.img");
    sparse_raw(&src, 8 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    pool.create_volume(&VolumeSpec::new("taken", Format::Qcow2, MIB))
        .await
        .unwrap();
    let (result, seen) = import(&pool, "taken", file(&src), &ImportOptions::default()).await;
    assert!(
        matches!(result, Err(PoolError::AlreadyExists { .. })),
        "{result:?}"
    );
    assert!(seen.is_empty(), "nothing was copied");
    assert!(matches!(
        import(&pool, "-bad", file(&src), &ImportOptions::default())
            .await
            .0,
        Err(PoolError::InvalidName(_))
    ));
    assert_eq!(files_in(dir.path()), ["taken.qcow2"]);
}

#[tokio::test]
async fn the_size_limit_is_enforced() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("disk.img");
    sparse_raw(&src, 8 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let mut opts = ImportOptions::default();
    opts.max_bytes = Some(4 * MIB);
    let message = invalid_request(import(&pool, "big", file(&src), &opts).await.0);
    assert!(message.contains("larger than the limit"), "{message}");

    // Without a Content-Length the limit stops the download as it passes it.
    let server = Server::start(HashMap::from([(
        "/big.raw",
        Reply::OkNoLength(Arc::new(busy_disk(8 * MIB as usize))),
    )]))
    .await;
    let message = invalid_request(
        import(
            &pool,
            "big",
            ImportSource::Url(server.url("/big.raw")),
            &opts,
        )
        .await
        .0,
    );
    assert!(message.contains("larger than the limit"), "{message}");
    assert!(files_in(dir.path()).is_empty());
}

// ---- read-only images --------------------------------------------------------------------------

#[tokio::test]
async fn a_read_only_import_is_an_image_that_can_be_cloned_and_deleted_but_not_resized() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("base.qcow2");
    qcow2_with_data(&src, 16 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let mut opts = ImportOptions::default();
    opts.read_only = true;
    let image = import(&pool, "debian-12", file(&src), &opts)
        .await
        .0
        .unwrap();
    assert!(image.info.read_only);
    let mode = std::fs::metadata(&image.info.path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o444);
    assert!(pool.volume("debian-12").await.unwrap().read_only);

    let err = pool
        .resize_volume("debian-12", 32 * MIB, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("read-only (an image); clone it first"),
        "{err}"
    );

    // Clones are ordinary writable volumes.
    let linked = pool
        .clone_volume("debian-12", "vm1", CloneMode::Linked, &mut |_| {})
        .await
        .unwrap();
    assert!(!linked.read_only);
    let full = pool
        .clone_volume("debian-12", "vm2", CloneMode::Full, &mut |_| {})
        .await
        .unwrap();
    assert!(!full.read_only);
    pool.resize_volume("vm2", 32 * MIB, false).await.unwrap();

    pool.delete_volume("vm1").await.unwrap();
    pool.delete_volume("debian-12").await.unwrap();
    assert_eq!(files_in(dir.path()), ["vm2.qcow2"]);
}

// ---- URL imports -------------------------------------------------------------------------------

#[tokio::test]
async fn a_url_is_downloaded_verified_and_imported() {
    let disk = Arc::new(busy_disk(6 * MIB as usize + 512));
    let server = Server::start(HashMap::from([
        ("/disk.raw", Reply::Ok(disk.clone())),
        ("/latest", Reply::Redirect("/disk.raw")),
        ("/stream.raw", Reply::OkNoLength(disk.clone())),
    ]))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;

    let mut opts = ImportOptions::default();
    opts.expected_sha256 = Some(sha256_hex(&disk));
    let (result, seen) = import(
        &pool,
        "web",
        ImportSource::Url(server.url("/latest")),
        &opts,
    )
    .await;
    let imported = result.unwrap();
    assert_eq!(imported.source_bytes, disk.len() as u64);
    assert_eq!(imported.info.format, Format::Raw);
    assert_eq!(std::fs::read(&imported.info.path).unwrap(), *disk);
    assert_eq!(seen[0].phase, ImportPhase::Downloading);
    assert_eq!(seen[0].total, Some(disk.len() as u64));
    let last_download = seen
        .iter()
        .rfind(|p| p.phase == ImportPhase::Downloading)
        .unwrap();
    assert_eq!(last_download.done, disk.len() as u64);

    // Without Content-Length the total is unknown but the import works.
    let (result, seen) = import(
        &pool,
        "streamed",
        ImportSource::Url(server.url("/stream.raw")),
        &ImportOptions::default(),
    )
    .await;
    assert_eq!(result.unwrap().sha256, sha256_hex(&disk));
    assert_eq!(seen[0].total, None);
    assert_eq!(files_in(dir.path()), ["streamed.raw", "web.raw"]);
}

#[tokio::test]
async fn failed_downloads_say_why_and_leave_nothing() {
    let disk = Arc::new(busy_disk(4 * MIB as usize));
    let server = Server::start(HashMap::from([
        ("/cut.raw", Reply::Cut(disk.clone(), MIB as usize + 100)),
        (
            "/error",
            Reply::Status(500, "Internal Server Error", "oops".to_string()),
        ),
        (
            "/login.html",
            Reply::Status(
                200,
                "OK",
                "<!DOCTYPE html><html><body>Sign in to download</body></html>\n".repeat(16),
            ),
        ),
        ("/loop1", Reply::Redirect("/loop2")),
        ("/loop2", Reply::Redirect("/loop1")),
    ]))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let url = |path| ImportSource::Url(server.url(path));
    let opts = ImportOptions::default();

    let message = invalid_request(import(&pool, "a", url("/cut.raw"), &opts).await.0);
    assert!(
        message.contains(&format!("ended after {} of {} bytes", MIB + 100, 4 * MIB)),
        "{message}"
    );
    let message = invalid_request(import(&pool, "a", url("/missing.qcow2"), &opts).await.0);
    assert!(message.contains("HTTP 404 Not Found"), "{message}");
    let message = invalid_request(import(&pool, "a", url("/error"), &opts).await.0);
    assert!(message.contains("HTTP 500"), "{message}");
    let message = invalid_request(import(&pool, "a", url("/login.html"), &opts).await.0);
    assert!(
        message.contains("an HTML page") && !message.contains("DOCTYPE"),
        "{message}"
    );
    let message = invalid_request(import(&pool, "a", url("/loop1"), &opts).await.0);
    assert!(
        message.contains("redirected more than 5 times"),
        "{message}"
    );
    let message = invalid_request(
        import(
            &pool,
            "a",
            ImportSource::Url("ftp://127.0.0.1/x.img".into()),
            &opts,
        )
        .await
        .0,
    );
    assert!(message.contains("only http:// and https://"), "{message}");

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let message = invalid_request(
        import(
            &pool,
            "a",
            ImportSource::Url(format!("http://{addr}/x")),
            &opts,
        )
        .await
        .0,
    );
    assert!(message.contains("could not connect"), "{message}");

    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    // The name is still free.
    assert!(pool.volume_names().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stalled_download_times_out() {
    let disk = Arc::new(busy_disk(4 * MIB as usize));
    let server = Server::start(HashMap::from([(
        "/slow.raw",
        Reply::Stall(disk, 512 * 1024),
    )]))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let mut opts = ImportOptions::default();
    opts.stall_timeout = Some(Duration::from_secs(1));
    let message = invalid_request(
        import(
            &pool,
            "s",
            ImportSource::Url(server.url("/slow.raw")),
            &opts,
        )
        .await
        .0,
    );
    assert!(
        message.contains("no data for 1 s") && message.contains("of 4194304 bytes"),
        "{message}"
    );
    assert!(files_in(dir.path()).is_empty());
}

// ---- cancellation ------------------------------------------------------------------------------

#[tokio::test]
async fn dropping_the_import_mid_download_leaves_nothing_and_the_name_free() {
    let disk = Arc::new(busy_disk(16 * MIB as usize));
    let server = Server::start(HashMap::from([
        ("/slow.raw", Reply::Stall(disk.clone(), 9 * MIB as usize)),
        ("/disk.raw", Reply::Ok(disk.clone())),
    ]))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;

    let received = Arc::new(Mutex::new(0u64));
    let r = received.clone();
    let opts = ImportOptions::default();
    let mut progress = move |p: ImportProgress| *r.lock().unwrap() = p.done;
    let import_future = pool.import_volume(
        "web",
        ImportSource::Url(server.url("/slow.raw")),
        &opts,
        &mut progress,
    );
    tokio::select! {
        result = import_future => panic!("the stalled import finished: {result:?}"),
        () = async {
            // Until two buffers have been written to the temporary file.
            while *received.lock().unwrap() < 9 * MIB
                || temp_files(dir.path()).is_empty()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } => {}
    }
    // The future is dropped: its temporary file is gone at once.
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    assert!(pool.volume_names().await.unwrap().is_empty());

    // The name is free for the next try.
    pool.import_volume(
        "web",
        ImportSource::Url(server.url("/disk.raw")),
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(files_in(dir.path()), ["web.raw"]);
}

#[tokio::test]
async fn a_cancel_token_stops_an_import_and_says_so() {
    let disk = Arc::new(busy_disk(16 * MIB as usize));
    let server = Server::start(HashMap::from([(
        "/slow.raw",
        Reply::Stall(disk, 5 * MIB as usize),
    )]))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let token = CancelToken::new();
    let mut opts = ImportOptions::default();
    opts.cancel = Some(token.clone());
    let t = token.clone();
    let mut progress = move |p: ImportProgress| {
        if p.done > 0 {
            t.cancel();
        }
    };
    let result = pool
        .import_volume(
            "web",
            ImportSource::Url(server.url("/slow.raw")),
            &opts,
            &mut progress,
        )
        .await;
    let message = invalid_request(result);
    assert!(message.contains("was cancelled"), "{message}");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn dropping_a_file_import_mid_copy_stops_its_threads() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("big.img");
    std::fs::write(&src, busy_disk(64 * MIB as usize)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let result = tokio::time::timeout(
        Duration::from_millis(30),
        pool.import_volume("big", file(&src), &ImportOptions::default(), &mut |_| {}),
    )
    .await;
    if result.is_ok() {
        // The machine copied 64 MiB in 30 ms: nothing to cancel.
        return;
    }
    assert!(temp_files(dir.path()).is_empty());
    // The copy threads stop within a buffer: no thread keeps the (unlinked) file open.
    let pool_dir = dir.path().to_string_lossy().into_owned();
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .all(|e| {
                !std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with(&pool_dir))
            })
    }));
}

// ---- space -------------------------------------------------------------------------------------

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop; `None` where mounting is not
/// allowed.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(SmallFs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

#[tokio::test]
async fn a_full_pool_is_no_space_before_or_during_the_copy() {
    let Some(fs) = SmallFs::mount("8M") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let pool = pool_in(&fs.path()).await;
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("big.img");
    let disk = Arc::new(busy_disk(16 * MIB as usize));
    std::fs::write(&src, &*disk).unwrap();

    // Known size: refused before copying.
    let result = import(&pool, "big", file(&src), &ImportOptions::default())
        .await
        .0;
    assert!(
        matches!(result, Err(PoolError::NoSpace { .. })),
        "{result:?}"
    );

    // Unknown size: the write fails mid-way.
    let server = Server::start(HashMap::from([("/big.raw", Reply::OkNoLength(disk))])).await;
    let result = import(
        &pool,
        "big",
        ImportSource::Url(server.url("/big.raw")),
        &ImportOptions::default(),
    )
    .await
    .0;
    match result {
        Err(e @ PoolError::NoSpace { .. }) => {
            assert!(e.to_string().contains("free some space"), "{e}")
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(
        files_in(&fs.path()).is_empty(),
        "{:?}",
        files_in(&fs.path())
    );
    drop(pool);
}

// ---- export ------------------------------------------------------------------------------------

#[tokio::test]
async fn an_exported_volume_imports_back_with_the_same_guest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let base = pool
        .create_volume(&VolumeSpec::new("base", Format::Qcow2, 32 * MIB))
        .await
        .unwrap();
    guest_write(&base.path, Format::Qcow2, 0x5a, 0, 4 * MIB);
    // A linked clone with data of its own: the export flattens the chain.
    let top = pool
        .clone_volume("base", "top", CloneMode::Linked, &mut |_| {})
        .await
        .unwrap();
    guest_write(&top.path, Format::Qcow2, 0xa5, 16 * MIB, 2 * MIB);

    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("top-export.qcow2");
    let mut seen = Vec::new();
    let exported = pool
        .export_volume("top", &dest, &ExportOptions::default(), &mut |p| {
            seen.push(p)
        })
        .await
        .unwrap();
    assert_eq!(exported.path, dest);
    assert_eq!(exported.size, std::fs::metadata(&dest).unwrap().len());
    assert_eq!(exported.sha256, sha256_of(&dest));
    assert!(seen.iter().any(|p| p.phase == ImportPhase::Converting));
    let info = qemu_img().info(&dest, Some(Format::Qcow2)).await.unwrap();
    assert_eq!(info.backing_file, None, "standalone");
    assert!(
        exported.size < 2 * MIB,
        "compressed: {} bytes for 6 MiB of patterned data",
        exported.size
    );
    assert_eq!(files_in(out_dir.path()), ["top-export.qcow2"]);

    let mut opts = ImportOptions::default();
    opts.expected_sha256 = Some(exported.sha256.clone());
    let back = import(&pool, "back", file(&dest), &opts).await.0.unwrap();
    assert!(same_guest_bytes(
        &top.path,
        Format::Qcow2,
        &back.info.path,
        Format::Qcow2
    ));
    assert_eq!(back.info.backing_volume, None);

    // An existing destination is kept unless overwriting is asked for.
    let message = invalid_request(
        pool.export_volume("base", &dest, &ExportOptions::default(), &mut |_| {})
            .await,
    );
    assert!(message.contains("already exists"), "{message}");
    assert_eq!(sha256_of(&dest), exported.sha256);
    let mut opts = ExportOptions::default();
    opts.overwrite = true;
    opts.compress = false;
    let replaced = pool
        .export_volume("base", &dest, &opts, &mut |_| {})
        .await
        .unwrap();
    assert_ne!(replaced.sha256, exported.sha256);
    assert!(same_guest_bytes(
        &base.path,
        Format::Qcow2,
        &dest,
        Format::Qcow2
    ));
    assert_eq!(files_in(out_dir.path()), ["top-export.qcow2"]);

    let message = invalid_request(
        pool.export_volume(
            "base",
            &out_dir.path().join("no/such/dir.qcow2"),
            &ExportOptions::default(),
            &mut |_| {},
        )
        .await,
    );
    assert!(message.contains("does not exist"), "{message}");
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn an_encrypted_volume_exports_decrypted_only_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let key = VolumeKey::generate().unwrap();
    let vol = pool
        .create_encrypted_volume(&VolumeSpec::new("secret", Format::Qcow2, 8 * MIB), &key)
        .await
        .unwrap();
    write_marker(&vol.path, &key, MIB, 64 * 1024);
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("secret.qcow2");

    let message = invalid_request(
        pool.export_volume("secret", &dest, &ExportOptions::default(), &mut |_| {})
            .await,
    );
    assert!(message.contains("needs its key"), "{message}");
    assert!(files_in(out_dir.path()).is_empty());

    let mut opts = ExportOptions::default();
    opts.key = Some(&key);
    pool.export_volume("secret", &dest, &opts, &mut |_| {})
        .await
        .unwrap();
    let info = qemu_img().info(&dest, Some(Format::Qcow2)).await.unwrap();
    assert!(!info.encrypted, "the export is plain");
    assert!(count(&guest_bytes(&dest, Format::Qcow2), MARKER) > 0);
}

#[tokio::test]
async fn an_exported_file_keeps_the_mode_of_a_new_file() {
    // Exporting a read-only image gives an ordinary file.
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("disk.img");
    sparse_raw(&src, 8 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path()).await;
    let mut opts = ImportOptions::default();
    opts.read_only = true;
    import(&pool, "img", file(&src), &opts).await.0.unwrap();
    let dest = src_dir.path().join("img.qcow2");
    pool.export_volume("img", &dest, &ExportOptions::default(), &mut |_| {})
        .await
        .unwrap();
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
    assert!(mode & 0o200 != 0, "mode {mode:o}");
    assert!(same_guest_bytes(&src, Format::Raw, &dest, Format::Qcow2));
}
