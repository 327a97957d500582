//! A typed async wrapper over the `qemu-img` binary.
//!
//! Rules every call follows:
//! - The format is always passed (`-f`, `-F`, `-O`); when a caller does not know it,
//!   [`detect_format`](crate::detect_format) reads the magic bytes. qemu-img never probes.
//! - Children run with `kill_on_drop`, so dropping a future (a cancelled import, a client that went
//!   away) kills qemu-img instead of leaving it to finish in the background.
//! - `LC_ALL=C`, so that the stderr we pass on in errors is stable English.
//! - Read-only inspection (`info`, `measure`) uses `-U` (force-share): an image that a running VM
//!   holds open is locked by QEMU, and without `-U` qemu-img refuses to look at it.
//!
//! # Encrypted images
//!
//! Encrypted volumes are qcow2 with LUKS encryption inside (`encrypt.format=luks`), keyed by a
//! per-volume [`VolumeKey`]. The key reaches qemu-img only through a pipe: each call that needs it
//! writes the key's LUKS passphrase into a [`SecretPipe`], passes the pipe's read end to the child
//! and names it in `--object secret,id=ID,file=/dev/fd/N,format=raw`; the image is then opened with
//! `--image-opts driver=qcow2,file.driver=file,file.filename=PATH,encrypt.key-secret=ID`. The
//! arguments, and so the error messages that quote them, never hold the key. `info` needs no key
//! (the LUKS header is public) and reports [`ImageInfo::encrypted`]; `create_encrypted`,
//! `resize_encrypted`, `check_encrypted`, and `convert`/`measure_convert` with
//! [`ConvertJob::src_key`]/[`ConvertJob::dst_key`] take one. A wrong key is
//! [`QemuImgError::WrongKey`]; a keyed operation run without the key is [`QemuImgError::KeyNeeded`].

mod progress;
pub mod snapshot;
mod types;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use vessel_secrets::{SecretPipe, VolumeKey};

use crate::format::{detect_format, Format};
use progress::{MonotonicProgress, ProgressParser};
pub(crate) use types::resolve_backing;
use types::RawInfo;
pub use types::{CheckReport, ImageInfo, Measurement};

/// What went wrong running qemu-img.
#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error(
        "qemu-img was not found (tried to run {program}); install it with \
         `apt-get install qemu-utils`"
    )]
    NotInstalled { program: PathBuf },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("qemu-img {op} failed ({status}): {stderr} [command: {command}]")]
    Failed {
        op: &'static str,
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error(
        "qemu-img {op} printed output that is not what qemu-img 7.x prints [command: {command}]"
    )]
    Parse {
        op: &'static str,
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error(
        "qemu-img {op}: the key given does not unlock the encrypted image (no LUKS keyslot \
         opens with it) [command: {command}]"
    )]
    WrongKey { op: &'static str, command: String },
    #[error(
        "qemu-img {op}: the image is encrypted and this operation needs its key \
         [command: {command}]"
    )]
    KeyNeeded { op: &'static str, command: String },
    #[error("could not pass the encryption key to qemu-img through a pipe")]
    SecretPipe(#[source] io::Error),
    #[error(
        "refusing to shrink {path} from {current} to {requested} bytes: data past the new end \
         would be lost; pass shrink=true if that is intended"
    )]
    ShrinkRefused {
        path: PathBuf,
        current: u64,
        requested: u64,
    },
    #[error("{path} is not a usable disk image: {reason}")]
    InvalidImage { path: PathBuf, reason: String },
    #[error("could not read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = QemuImgError> = std::result::Result<T, E>;

/// A copy of an image into a new file, optionally changing its format.
#[derive(Debug, Clone)]
pub struct ConvertJob<'a> {
    pub src: &'a Path,
    pub src_format: Format,
    pub dst: &'a Path,
    pub dst_format: Format,
    /// Compress the clusters of a qcow2 target (for exports; slower, smaller).
    pub compress: bool,
    /// Bytes per second qemu-img may read (`-r`), so a big import does not starve running VMs.
    pub rate_limit: Option<u64>,
    /// The key of an encrypted (LUKS-in-qcow2) source.
    pub src_key: Option<&'a VolumeKey>,
    /// Encrypt the (qcow2) target with this key. Targets cannot be both encrypted and compressed.
    pub dst_key: Option<&'a VolumeKey>,
}

impl<'a> ConvertJob<'a> {
    /// A plain, uncompressed, unthrottled copy.
    pub fn new(src: &'a Path, src_format: Format, dst: &'a Path, dst_format: Format) -> Self {
        Self {
            src,
            src_format,
            dst,
            dst_format,
            compress: false,
            rate_limit: None,
            src_key: None,
            dst_key: None,
        }
    }
}

/// The `qemu-img` binary to run.
#[derive(Debug, Clone)]
pub struct QemuImg {
    program: PathBuf,
}

impl Default for QemuImg {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuImg {
    /// `qemu-img` from `PATH`.
    pub fn new() -> Self {
        Self::with_program("qemu-img")
    }

    /// A specific binary (a test build, a non-standard install).
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// The first line of `qemu-img --version`, e.g. `qemu-img version 7.2.22 (Debian ...)`.
    pub async fn version(&self) -> Result<String> {
        let out = self.run("version", args(["--version"]), Vec::new()).await?;
        let text = String::from_utf8_lossy(&out);
        Ok(text.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Describes one image. Without a format, the format comes from the file's magic bytes.
    pub async fn info(&self, path: &Path, format: Option<Format>) -> Result<ImageInfo> {
        let format = self.format_of(path, format).await?;
        let mut a = args(["info", "-U", "--output=json", "-f", format.as_str()]);
        a.push(path.into());
        let command = render(&a);
        let out = self.run("info", a, Vec::new()).await?;
        let raw: RawInfo = parse_json("info", &command, &out)?;
        to_info(raw, path)
    }

    /// Describes an image and every image below it, the image itself first. Refuses a chain in
    /// which an image does not record its backing file's format, since QEMU would probe it.
    pub async fn backing_chain(
        &self,
        path: &Path,
        format: Option<Format>,
    ) -> Result<Vec<ImageInfo>> {
        let format = self.format_of(path, format).await?;
        let mut a = args([
            "info",
            "-U",
            "--backing-chain",
            "--output=json",
            "-f",
            format.as_str(),
        ]);
        a.push(path.into());
        let command = render(&a);
        let out = self.run("info", a, Vec::new()).await?;
        let raws: Vec<RawInfo> = parse_json("info", &command, &out)?;
        chain_from_raw(raws, path)
    }

    /// Creates an image. With a backing file it is a qcow2 overlay (linked clone) whose size
    /// defaults to the backing file's; without one a size is required.
    pub async fn create(
        &self,
        path: &Path,
        format: Format,
        size: Option<u64>,
        backing: Option<(&Path, Format)>,
    ) -> Result<()> {
        check_create(path, format, size, backing)?;
        let mut a = args(["create", "-q", "-f", format.as_str()]);
        if let Some((file, backing_format)) = backing {
            a.extend(args(["-b"]));
            a.push(file.into());
            a.extend(args(["-F", backing_format.as_str()]));
        }
        a.push(path.into());
        if let Some(size) = size {
            a.push(size.to_string().into());
        }
        self.run("create", a, Vec::new()).await.map(drop)
    }

    /// Creates an encrypted qcow2 image of `size` bytes: LUKS inside qcow2, unlocked by `key`.
    /// Only qcow2 can be encrypted; encrypted images have no backing file.
    pub async fn create_encrypted(
        &self,
        path: &Path,
        format: Format,
        size: u64,
        key: &VolumeKey,
    ) -> Result<()> {
        need_qcow2(path, format)?;
        let mut runs = 1;
        loop {
            let pipe = secret_pipe(SRC_SECRET, key)?;
            let a = create_encrypted_args(path, size, &pipe);
            match self.run("create", a, vec![pipe]).await {
                Err(err) if run_luks_creation_again(path, &mut runs, &err) => {}
                other => return other.map(drop),
            }
        }
    }

    /// Copies `job.src` into a new file `job.dst`, flattening any backing chain, and reports
    /// progress as increasing percentages that end at 100 on success.
    pub async fn convert(&self, job: &ConvertJob<'_>, progress: impl FnMut(f64)) -> Result<()> {
        if job.compress && job.dst_format != Format::Qcow2 {
            return Err(QemuImgError::Unsupported {
                path: job.dst.to_path_buf(),
                reason: "only qcow2 targets can be compressed; choose qcow2 or drop compression"
                    .to_string(),
            });
        }
        if job.compress && job.dst_key.is_some() {
            return Err(QemuImgError::Unsupported {
                path: job.dst.to_path_buf(),
                reason: "an encrypted target cannot be compressed (qemu-img does not support \
                         both); drop compression"
                    .to_string(),
            });
        }
        let mut progress = MonotonicProgress::new(progress);
        let mut runs = 1;
        loop {
            match self.convert_once(job, &mut progress).await {
                // An encrypted target starts with a new LUKS header, which can hit QEMU's
                // benchmark flake; the next run rewrites the target from the start.
                Err(err)
                    if job.dst_key.is_some()
                        && run_luks_creation_again(job.dst, &mut runs, &err) => {}
                other => break other?,
            }
        }
        progress.finish();
        Ok(())
    }

    async fn convert_once(
        &self,
        job: &ConvertJob<'_>,
        progress: &mut MonotonicProgress<impl FnMut(f64)>,
    ) -> Result<()> {
        let secrets = job_secrets(job)?;
        let a = convert_args(job, &secrets)?;
        let command = render(&a);
        let mut child = self.spawn(&a, &command, secrets.into_vec())?;
        let (read, stderr) = tokio::join!(
            follow_progress(child.stdout.take(), progress),
            read_all(child.stderr.take()),
        );
        let status = child.wait().await.map_err(|source| QemuImgError::Spawn {
            command: command.clone(),
            source,
        })?;
        check_status("convert", &command, status, &stderr.unwrap_or_default())?;
        read.map_err(|source| QemuImgError::Spawn { command, source })
    }

    /// Changes an image's virtual size. Shrinking loses data, so it needs `shrink`.
    pub async fn resize(
        &self,
        path: &Path,
        format: Format,
        new_size: u64,
        shrink: bool,
    ) -> Result<()> {
        self.resize_with(path, format, new_size, shrink, None).await
    }

    /// [`resize`](Self::resize) for an encrypted image, which qemu-img must unlock with `key`.
    pub async fn resize_encrypted(
        &self,
        path: &Path,
        format: Format,
        new_size: u64,
        shrink: bool,
        key: &VolumeKey,
    ) -> Result<()> {
        self.resize_with(path, format, new_size, shrink, Some(key))
            .await
    }

    async fn resize_with(
        &self,
        path: &Path,
        format: Format,
        new_size: u64,
        shrink: bool,
        key: Option<&VolumeKey>,
    ) -> Result<()> {
        let current = self.info(path, Some(format)).await?.virtual_size;
        if new_size < current && !shrink {
            return Err(QemuImgError::ShrinkRefused {
                path: path.to_path_buf(),
                current,
                requested: new_size,
            });
        }
        let mut a = args(["resize", "-q"]);
        if new_size < current {
            a.extend(args(["--shrink"]));
        }
        let (image, secrets) = image_args(path, format, key)?;
        a.extend(image);
        a.push(new_size.to_string().into());
        self.run("resize", a, secrets).await.map(drop)
    }

    /// Checks a qcow2 image's metadata. qemu-img exits 2 for corruptions and 3 for leaks and
    /// still prints its report; both are returned as a report, not as an error.
    pub async fn check(&self, path: &Path, format: Format) -> Result<CheckReport> {
        self.check_with(path, format, None).await
    }

    /// [`check`](Self::check) for an encrypted image, which qemu-img must unlock with `key`.
    pub async fn check_encrypted(
        &self,
        path: &Path,
        format: Format,
        key: &VolumeKey,
    ) -> Result<CheckReport> {
        self.check_with(path, format, Some(key)).await
    }

    async fn check_with(
        &self,
        path: &Path,
        format: Format,
        key: Option<&VolumeKey>,
    ) -> Result<CheckReport> {
        if format == Format::Raw {
            return Err(QemuImgError::Unsupported {
                path: path.to_path_buf(),
                reason: "raw images have no metadata to check".to_string(),
            });
        }
        let mut a = args(["check", "--output=json"]);
        let (image, secrets) = image_args(path, format, key)?;
        a.extend(image);
        let command = render(&a);
        let (status, stdout, stderr) = self.run_raw(&a, &command, secrets).await?;
        // 0: clean, 2: corruptions, 3: leaks; the JSON report is printed in all three cases.
        if !matches!(status.code(), Some(0 | 2 | 3)) {
            check_status("check", &command, status, &stderr)?;
        }
        parse_json("check", &command, &stdout)
    }

    /// Bytes a copy of `path` in `target` format would need.
    pub async fn measure(
        &self,
        path: &Path,
        format: Format,
        target: Format,
    ) -> Result<Measurement> {
        let mut a = args([
            "measure",
            "-U",
            "--output=json",
            "-f",
            format.as_str(),
            "-O",
            target.as_str(),
        ]);
        a.push(path.into());
        let command = render(&a);
        let out = self.run("measure", a, Vec::new()).await?;
        parse_json("measure", &command, &out)
    }

    /// Bytes the target of `job` would need, with its keys: an encrypted source is opened with
    /// [`ConvertJob::src_key`], and an encrypted target counts its LUKS header.
    pub async fn measure_convert(&self, job: &ConvertJob<'_>) -> Result<Measurement> {
        let mut runs = 1;
        loop {
            match self.measure_convert_once(job).await {
                // Measuring an encrypted target sizes a LUKS header: the same benchmark flake.
                Err(err)
                    if job.dst_key.is_some()
                        && run_luks_creation_again(job.dst, &mut runs, &err) => {}
                other => return other,
            }
        }
    }

    async fn measure_convert_once(&self, job: &ConvertJob<'_>) -> Result<Measurement> {
        let secrets = job_secrets(job)?;
        let mut a = args(["measure", "-U", "--output=json"]);
        a.extend(secrets.object_args());
        a.extend(args(["-O", job.dst_format.as_str()]));
        if let Some(dst) = &secrets.dst {
            need_qcow2(job.dst, job.dst_format)?;
            a.extend(args(["-o"]));
            a.push(encrypt_options(dst.id()).into());
        }
        a.extend(source_args(job.src, job.src_format, secrets.src.as_ref())?);
        let command = render(&a);
        let out = self.run("measure", a, secrets.into_vec()).await?;
        parse_json("measure", &command, &out)
    }

    /// Checks that a file is a disk image Vessel can safely use as an image: readable by
    /// qemu-img, not truncated, no corrupt metadata, and self-contained (no backing file and no
    /// external data file, which would let an imported file make QEMU read another host file).
    /// The format comes from the magic bytes; a `.qcow2` name on a non-qcow2 file is refused.
    pub async fn validate_image(&self, path: &Path) -> Result<ImageInfo> {
        let format = self.format_of(path, None).await?;
        let len = file_len(path).await?;
        precheck(path, format, len)?;
        let info = self
            .info(path, Some(format))
            .await
            .map_err(|e| invalid_if_failed(path, e))?;
        self_contained(&info)?;
        if format == Format::Qcow2 {
            let report = self
                .check(path, format)
                .await
                .map_err(|e| invalid_if_failed(path, e))?;
            judge_check(path, len, &report)?;
        }
        Ok(info)
    }

    async fn format_of(&self, path: &Path, format: Option<Format>) -> Result<Format> {
        match format {
            Some(format) => Ok(format),
            None => detect_format(path)
                .await
                .map_err(|source| QemuImgError::Io {
                    path: path.to_path_buf(),
                    source,
                }),
        }
    }

    /// Runs qemu-img to completion; `Ok` is its stdout when it exited 0.
    async fn run(
        &self,
        op: &'static str,
        a: Vec<OsString>,
        secrets: Vec<SecretPipe>,
    ) -> Result<Vec<u8>> {
        let command = render(&a);
        let (status, stdout, stderr) = self.run_raw(&a, &command, secrets).await?;
        check_status(op, &command, status, &stderr)?;
        Ok(stdout)
    }

    async fn run_raw(
        &self,
        a: &[OsString],
        command: &str,
        secrets: Vec<SecretPipe>,
    ) -> Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
        let child = self.spawn(a, command, secrets)?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| QemuImgError::Spawn {
                command: command.to_string(),
                source,
            })?;
        Ok((out.status, out.stdout, out.stderr))
    }

    /// Starts qemu-img. The child inherits the read ends of `secrets` (and no other descriptor
    /// of ours); this process's copies are closed when the `Command` is dropped, right after the
    /// spawn.
    fn spawn(&self, a: &[OsString], command: &str, secrets: Vec<SecretPipe>) -> Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(a)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for pipe in secrets {
            pipe.pass_to(cmd.as_std_mut());
        }
        let spawned = cmd.spawn();
        drop(cmd);
        spawned.map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => QemuImgError::NotInstalled {
                program: self.program.clone(),
            },
            _ => QemuImgError::Spawn {
                command: command.to_string(),
                source,
            },
        })
    }
}

fn args<const N: usize>(list: [&str; N]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// The command as text for error messages. Arguments carry paths and formats only: secrets go
/// through `--object secret,file=...`, never as arguments.
fn render(a: &[OsString]) -> String {
    let parts: Vec<_> = a.iter().map(|s| s.to_string_lossy()).collect();
    format!("qemu-img {}", parts.join(" "))
}

/// Secret object ids: the image an operation opens (or creates), and a convert's target.
const SRC_SECRET: &str = "sec0";
const DST_SECRET: &str = "sec1";

/// PBKDF2 time, in milliseconds, that QEMU spends on a new LUKS header's keyslot (QEMU's default
/// is 2000). PBKDF2 stretches guessable passphrases; ours are 256-bit random keys that no
/// stretching makes any harder to guess, while every open of the image (each VM start, each
/// qemu-img call) pays this time again.
const LUKS_ITER_TIME_MS: u32 = 10;

fn secret_pipe(id: &str, key: &VolumeKey) -> Result<SecretPipe> {
    SecretPipe::for_volume_key(id, key).map_err(QemuImgError::SecretPipe)
}

fn need_qcow2(path: &Path, format: Format) -> Result<()> {
    if format == Format::Qcow2 {
        return Ok(());
    }
    Err(QemuImgError::Unsupported {
        path: path.to_path_buf(),
        reason: "encryption needs qcow2 (LUKS inside qcow2); raw images cannot be encrypted"
            .to_string(),
    })
}

/// `-o` options that make a new qcow2 image LUKS-encrypted with the secret `id`.
fn encrypt_options(id: &str) -> String {
    format!("encrypt.format=luks,encrypt.key-secret={id},encrypt.iter-time={LUKS_ITER_TIME_MS}")
}

fn create_encrypted_args(path: &Path, size: u64, pipe: &SecretPipe) -> Vec<OsString> {
    let mut a = args(["create", "-q", "-f", "qcow2", "--object"]);
    a.push(pipe.object_arg().into());
    a.extend(args(["-o"]));
    a.push(encrypt_options(pipe.id()).into());
    a.push(path.into());
    a.push(size.to_string().into());
    a
}

/// The `--image-opts` string that opens the encrypted qcow2 image `path` with secret `id`. The
/// protocol driver is named too (`file`), so that QEMU never interprets the path as a protocol
/// (`nbd:`, `json:`); commas in the path are doubled, QEMU's escape.
fn image_opts(path: &Path, id: &str) -> Result<OsString> {
    let Some(text) = path.to_str() else {
        return Err(QemuImgError::Unsupported {
            path: path.to_path_buf(),
            reason: "an encrypted image's path must be UTF-8 (it goes into --image-opts)"
                .to_string(),
        });
    };
    let escaped = text.replace(',', ",,");
    Ok(
        format!("driver=qcow2,file.driver=file,file.filename={escaped},encrypt.key-secret={id}")
            .into(),
    )
}

/// How an operation names the image it opens: `-f FORMAT PATH`, or for an encrypted image
/// `--image-opts OPTIONS` unlocked by the secret object of `pipe` (whose `--object` comes
/// separately, before it).
fn source_args(path: &Path, format: Format, pipe: Option<&SecretPipe>) -> Result<Vec<OsString>> {
    match pipe {
        None => {
            let mut a = args(["-f", format.as_str()]);
            a.push(path.into());
            Ok(a)
        }
        Some(pipe) => {
            need_qcow2(path, format)?;
            let mut a = args(["--image-opts"]);
            a.push(image_opts(path, pipe.id())?);
            Ok(a)
        }
    }
}

/// `--object ... --image-opts ...` or `-f FORMAT PATH` for one image, and the pipe to pass.
fn image_args(
    path: &Path,
    format: Format,
    key: Option<&VolumeKey>,
) -> Result<(Vec<OsString>, Vec<SecretPipe>)> {
    let Some(key) = key else {
        return Ok((source_args(path, format, None)?, Vec::new()));
    };
    need_qcow2(path, format)?;
    let pipe = secret_pipe(SRC_SECRET, key)?;
    let mut a = args(["--object"]);
    a.push(pipe.object_arg().into());
    a.extend(source_args(path, format, Some(&pipe))?);
    Ok((a, vec![pipe]))
}

/// The secret pipes of a convert: the source's key and the target's.
struct JobSecrets {
    src: Option<SecretPipe>,
    dst: Option<SecretPipe>,
}

impl JobSecrets {
    fn object_args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        for pipe in self.src.iter().chain(&self.dst) {
            a.extend(args(["--object"]));
            a.push(pipe.object_arg().into());
        }
        a
    }

    fn into_vec(self) -> Vec<SecretPipe> {
        self.src.into_iter().chain(self.dst).collect()
    }
}

fn job_secrets(job: &ConvertJob<'_>) -> Result<JobSecrets> {
    Ok(JobSecrets {
        src: job
            .src_key
            .map(|k| secret_pipe(SRC_SECRET, k))
            .transpose()?,
        dst: job
            .dst_key
            .map(|k| secret_pipe(DST_SECRET, k))
            .transpose()?,
    })
}

fn convert_args(job: &ConvertJob<'_>, secrets: &JobSecrets) -> Result<Vec<OsString>> {
    let mut a = args(["convert", "-p"]);
    a.extend(secrets.object_args());
    a.extend(args(["-O", job.dst_format.as_str()]));
    if let Some(dst) = &secrets.dst {
        need_qcow2(job.dst, job.dst_format)?;
        a.extend(args(["-o"]));
        a.push(encrypt_options(dst.id()).into());
    }
    if job.compress {
        a.extend(args(["-c"]));
    }
    if let Some(rate) = job.rate_limit {
        a.extend(args(["-r"]));
        a.push(rate.to_string().into());
    }
    a.extend(source_args(job.src, job.src_format, secrets.src.as_ref())?);
    a.push(job.dst.into());
    Ok(a)
}

fn check_create(
    path: &Path,
    format: Format,
    size: Option<u64>,
    backing: Option<(&Path, Format)>,
) -> Result<()> {
    let reason = match (backing, size) {
        (Some(_), _) if format != Format::Qcow2 => {
            "only qcow2 images can have a backing file; create it as qcow2"
        }
        (None, None) => "an image without a backing file needs a size, e.g. 20G",
        _ => return Ok(()),
    };
    Err(QemuImgError::Unsupported {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    })
}

/// What qemu-img 7.2 prints when a LUKS image's key is wrong, and when it is missing.
const WRONG_KEY: &str = "Invalid password, cannot unlock any keyslot";
const KEY_NEEDED: &str = "Parameter 'encrypt.key-secret' is required for cipher";

/// QEMU 7.2 sizes a new LUKS header by timing PBKDF2 on the thread's CPU clock and gives up
/// with this message when the short first round reads 0 ms: about 1 creation in 6 on hosts with
/// SHA-NI, whatever `iter-time` is (host-facts). The failed run leaves nothing that the next run
/// does not overwrite, so LUKS creations retry on exactly this error and no other.
const LUKS_BENCHMARK_FLAKE: &str = "Unable to get accurate CPU usage";

/// At 1 failure in 6 per run, 8 runs all fail about once in 1.7 million creations.
const LUKS_CREATE_ATTEMPTS: u32 = 8;

/// Whether a LUKS creation (or measurement) for `target` that failed with `err` after `runs` runs should run
/// again: only for QEMU's PBKDF2 benchmark flake, at most [`LUKS_CREATE_ATTEMPTS`] runs in all.
fn run_luks_creation_again(target: &Path, runs: &mut u32, err: &QemuImgError) -> bool {
    let flake =
        matches!(err, QemuImgError::Failed { stderr, .. } if stderr.contains(LUKS_BENCHMARK_FLAKE));
    if !flake || *runs >= LUKS_CREATE_ATTEMPTS {
        return false;
    }
    tracing::debug!(target = %target.display(), runs = *runs, "qemu-img's LUKS benchmark read 0 ms; running it again");
    *runs += 1;
    true
}

fn check_status(op: &'static str, command: &str, status: ExitStatus, stderr: &[u8]) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(stderr);
    if text.contains(WRONG_KEY) {
        return Err(QemuImgError::WrongKey {
            op,
            command: command.to_string(),
        });
    }
    if text.contains(KEY_NEEDED) {
        return Err(QemuImgError::KeyNeeded {
            op,
            command: command.to_string(),
        });
    }
    Err(QemuImgError::Failed {
        op,
        command: command.to_string(),
        status,
        stderr: clean_stderr(stderr),
    })
}

/// qemu-img's stderr without its `qemu-img: ` prefixes, on one line.
fn clean_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("qemu-img: "))
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "(no message)".to_string()
    } else {
        lines.join("; ")
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    op: &'static str,
    command: &str,
    out: &[u8],
) -> Result<T> {
    serde_json::from_slice(out).map_err(|source| QemuImgError::Parse {
        op,
        command: command.to_string(),
        source,
    })
}

fn to_info(raw: RawInfo, path: &Path) -> Result<ImageInfo> {
    raw.into_info(path)
        .map_err(|reason| QemuImgError::Unsupported {
            path: path.to_path_buf(),
            reason,
        })
}

/// Each image's path is where the one above it says its backing file is (qemu-img's own
/// `filename` for backing images depends on how the chain was named).
fn chain_from_raw(raws: Vec<RawInfo>, top: &Path) -> Result<Vec<ImageInfo>> {
    let mut chain: Vec<ImageInfo> = Vec::with_capacity(raws.len());
    let mut path = top.to_path_buf();
    for raw in raws {
        let info = to_info(raw, &path)?;
        if let (Some(backing), None) = (&info.backing_file, info.backing_format) {
            return Err(QemuImgError::Unsupported {
                path: path.clone(),
                reason: format!(
                    "its backing file {backing} has no recorded format, so QEMU would have to \
                     probe it; record it with `qemu-img rebase -u -F qcow2|raw -b {backing} {}`",
                    path.display()
                ),
            });
        }
        path = match &info.backing_file {
            Some(b) => resolve_backing(&path, b),
            None => path,
        };
        chain.push(info);
    }
    Ok(chain)
}

async fn follow_progress<F: FnMut(f64)>(
    stdout: Option<impl AsyncRead + Unpin>,
    progress: &mut MonotonicProgress<F>,
) -> io::Result<()> {
    let Some(mut stdout) = stdout else {
        return Ok(());
    };
    let mut parser = ProgressParser::default();
    let mut buf = [0u8; 1024];
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        for percent in parser.feed(&buf[..n]) {
            progress.report(percent);
        }
    }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut out).await?;
    }
    Ok(out)
}

async fn file_len(path: &Path) -> Result<u64> {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .map_err(|source| QemuImgError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn invalid(path: &Path, reason: impl Into<String>) -> QemuImgError {
    QemuImgError::InvalidImage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// qemu-img refusing to open a file means the file is bad, not that qemu-img is.
fn invalid_if_failed(path: &Path, e: QemuImgError) -> QemuImgError {
    match e {
        QemuImgError::Failed { stderr, .. } => invalid(path, stderr),
        other => other,
    }
}

/// Cheap checks before qemu-img looks at the file.
fn precheck(path: &Path, format: Format, len: u64) -> Result<()> {
    let named_qcow2 = path.extension() == Some(OsStr::new("qcow2"));
    if named_qcow2 && format != Format::Qcow2 {
        return Err(invalid(
            path,
            "it is named .qcow2 but does not start with the qcow2 magic bytes (QFI\\xfb); \
             it is not a qcow2 image or its header was damaged",
        ));
    }
    if len == 0 {
        return Err(invalid(path, "the file is empty"));
    }
    // Every disk is a whole number of sectors; a file that is not is almost certainly not a disk
    // image (a text file, an HTML error page from a failed download, a cut-off transfer).
    if format == Format::Raw && len % crate::size::SECTOR_SIZE != 0 {
        return Err(invalid(
            path,
            format!(
                "as a raw image its size, {len} bytes, would have to be a multiple of 512; \
                 it is not a disk image or it is incomplete"
            ),
        ));
    }
    Ok(())
}

fn self_contained(info: &ImageInfo) -> Result<()> {
    if let Some(backing) = &info.backing_file {
        return Err(invalid(
            &info.path,
            format!(
                "it has a backing file ({backing}); an image must be self-contained: flatten it \
                 with `qemu-img convert -O qcow2` first"
            ),
        ));
    }
    if let Some(data_file) = &info.data_file {
        return Err(invalid(
            &info.path,
            format!(
                "its data lives in an external data file ({data_file}); an image must be \
                 self-contained: flatten it with `qemu-img convert -O qcow2` first"
            ),
        ));
    }
    if info.encrypted {
        return Err(invalid(
            &info.path,
            "it is encrypted, and Vessel has no key for it; an image must be unencrypted: \
             decrypt it with `qemu-img convert --object secret,... --image-opts ... -O qcow2` \
             first (volumes made from it can then be encrypted with their own keys)",
        ));
    }
    if info.corrupt {
        return Err(invalid(
            &info.path,
            "QEMU marked it corrupt; repair it with `qemu-img check -r all` or get a fresh copy",
        ));
    }
    Ok(())
}

fn judge_check(path: &Path, len: u64, report: &CheckReport) -> Result<()> {
    if let Some(end) = report.image_end_offset.filter(|end| *end > len) {
        return Err(invalid(
            path,
            format!(
                "it is truncated: the file is {len} bytes but its qcow2 metadata reaches {end} \
                 bytes; copy or download it again"
            ),
        ));
    }
    if !report.is_clean() {
        return Err(invalid(
            path,
            format!(
                "qemu-img check found {} corruption(s) and {} check error(s); get a fresh copy \
                 or try `qemu-img check -r all` on a copy",
                report.corruptions, report.check_errors
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form in which a key could leak into an argument.
    fn leaks(a: &[OsString], key: &VolumeKey) -> Vec<String> {
        use std::os::unix::ffi::OsStrExt;
        let joined: Vec<u8> = a
            .iter()
            .flat_map(|s| s.as_bytes().iter().copied().chain([0]))
            .collect();
        let hex: String = key
            .expose_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let forms: [(&str, Vec<u8>); 3] = [
            ("passphrase", key.luks_passphrase().as_bytes().to_vec()),
            ("raw key", key.expose_bytes().to_vec()),
            ("hex key", hex.into_bytes()),
        ];
        forms
            .into_iter()
            .filter(|(_, form)| joined.windows(form.len()).any(|w| w == form.as_slice()))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    fn strings(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn create_passes_the_key_as_a_secret_object_only() {
        let key = VolumeKey::generate().unwrap();
        let pipe = secret_pipe(SRC_SECRET, &key).unwrap();
        let a = create_encrypted_args(Path::new("/pool/web.qcow2"), 1 << 30, &pipe);
        assert!(leaks(&a, &key).is_empty(), "{:?}", leaks(&a, &key));
        let fd = pipe.fd();
        assert_eq!(
            strings(&a),
            [
                "create".to_string(),
                "-q".into(),
                "-f".into(),
                "qcow2".into(),
                "--object".into(),
                format!("secret,id=sec0,file=/dev/fd/{fd},format=raw"),
                "-o".into(),
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10".into(),
                "/pool/web.qcow2".into(),
                "1073741824".into(),
            ]
        );
    }

    #[test]
    fn a_re_encrypting_convert_names_two_secrets_and_holds_neither_key() {
        let (k1, k2) = (
            VolumeKey::generate().unwrap(),
            VolumeKey::generate().unwrap(),
        );
        let mut job = ConvertJob::new(
            Path::new("/p/a,b.qcow2"),
            Format::Qcow2,
            Path::new("/p/c.qcow2"),
            Format::Qcow2,
        );
        job.src_key = Some(&k1);
        job.dst_key = Some(&k2);
        let secrets = job_secrets(&job).unwrap();
        let (fd1, fd2) = (
            secrets.src.as_ref().unwrap().fd(),
            secrets.dst.as_ref().unwrap().fd(),
        );
        let a = convert_args(&job, &secrets).unwrap();
        assert!(leaks(&a, &k1).is_empty() && leaks(&a, &k2).is_empty());
        assert_eq!(
            strings(&a),
            [
                "convert".to_string(),
                "-p".into(),
                "--object".into(),
                format!("secret,id=sec0,file=/dev/fd/{fd1},format=raw"),
                "--object".into(),
                format!("secret,id=sec1,file=/dev/fd/{fd2},format=raw"),
                "-O".into(),
                "qcow2".into(),
                "-o".into(),
                "encrypt.format=luks,encrypt.key-secret=sec1,encrypt.iter-time=10".into(),
                "--image-opts".into(),
                "driver=qcow2,file.driver=file,file.filename=/p/a,,b.qcow2,\
                 encrypt.key-secret=sec0"
                    .into(),
                "/p/c.qcow2".into(),
            ]
        );
        // The debugging form of a job shows no key either.
        assert!(!format!("{job:?}").contains(k1.luks_passphrase().as_str()));
    }

    #[test]
    fn keyed_operations_refuse_raw_images() {
        let key = VolumeKey::generate().unwrap();
        let err = image_args(Path::new("/p/x.raw"), Format::Raw, Some(&key)).unwrap_err();
        assert!(err.to_string().contains("encryption needs qcow2"), "{err}");
        let (a, pipes) = image_args(Path::new("/p/x.raw"), Format::Raw, None).unwrap();
        assert_eq!(strings(&a), ["-f", "raw", "/p/x.raw"]);
        assert!(pipes.is_empty());
    }

    #[test]
    fn qemu_img_key_errors_become_typed_errors() {
        use std::os::unix::process::ExitStatusExt;
        let failed = ExitStatus::from_raw(1 << 8);
        let wrong = b"qemu-img: Could not open 'driver=qcow2,...': Invalid password, cannot \
                      unlock any keyslot\n";
        assert!(matches!(
            check_status("check", "qemu-img check", failed, wrong),
            Err(QemuImgError::WrongKey { op: "check", .. })
        ));
        let missing = b"qemu-img: Could not open 'e.qcow2': Parameter 'encrypt.key-secret' is \
                        required for cipher\n";
        assert!(matches!(
            check_status("resize", "qemu-img resize", failed, missing),
            Err(QemuImgError::KeyNeeded { op: "resize", .. })
        ));
    }
}
