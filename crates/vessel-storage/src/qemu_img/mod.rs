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

mod progress;
mod types;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

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
        let out = self.run("version", args(["--version"])).await?;
        let text = String::from_utf8_lossy(&out);
        Ok(text.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Describes one image. Without a format, the format comes from the file's magic bytes.
    pub async fn info(&self, path: &Path, format: Option<Format>) -> Result<ImageInfo> {
        let format = self.format_of(path, format).await?;
        let mut a = args(["info", "-U", "--output=json", "-f", format.as_str()]);
        a.push(path.into());
        let command = render(&a);
        let out = self.run("info", a).await?;
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
        let out = self.run("info", a).await?;
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
        self.run("create", a).await.map(drop)
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
        let a = convert_args(job);
        let command = render(&a);
        let mut child = self.spawn(&a, &command)?;
        let mut progress = MonotonicProgress::new(progress);
        let (read, stderr) = tokio::join!(
            follow_progress(child.stdout.take(), &mut progress),
            read_all(child.stderr.take()),
        );
        let status = child.wait().await.map_err(|source| QemuImgError::Spawn {
            command: command.clone(),
            source,
        })?;
        check_status("convert", &command, status, &stderr.unwrap_or_default())?;
        read.map_err(|source| QemuImgError::Spawn { command, source })?;
        progress.finish();
        Ok(())
    }

    /// Changes an image's virtual size. Shrinking loses data, so it needs `shrink`.
    pub async fn resize(
        &self,
        path: &Path,
        format: Format,
        new_size: u64,
        shrink: bool,
    ) -> Result<()> {
        let current = self.info(path, Some(format)).await?.virtual_size;
        if new_size < current && !shrink {
            return Err(QemuImgError::ShrinkRefused {
                path: path.to_path_buf(),
                current,
                requested: new_size,
            });
        }
        let mut a = args(["resize", "-q", "-f", format.as_str()]);
        if new_size < current {
            a.extend(args(["--shrink"]));
        }
        a.push(path.into());
        a.push(new_size.to_string().into());
        self.run("resize", a).await.map(drop)
    }

    /// Checks a qcow2 image's metadata. qemu-img exits 2 for corruptions and 3 for leaks and
    /// still prints its report; both are returned as a report, not as an error.
    pub async fn check(&self, path: &Path, format: Format) -> Result<CheckReport> {
        if format == Format::Raw {
            return Err(QemuImgError::Unsupported {
                path: path.to_path_buf(),
                reason: "raw images have no metadata to check".to_string(),
            });
        }
        let mut a = args(["check", "--output=json", "-f", format.as_str()]);
        a.push(path.into());
        let command = render(&a);
        let (status, stdout, stderr) = self.run_raw(&a, &command).await?;
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
        let out = self.run("measure", a).await?;
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
    async fn run(&self, op: &'static str, a: Vec<OsString>) -> Result<Vec<u8>> {
        let command = render(&a);
        let (status, stdout, stderr) = self.run_raw(&a, &command).await?;
        check_status(op, &command, status, &stderr)?;
        Ok(stdout)
    }

    async fn run_raw(
        &self,
        a: &[OsString],
        command: &str,
    ) -> Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
        let child = self.spawn(a, command)?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| QemuImgError::Spawn {
                command: command.to_string(),
                source,
            })?;
        Ok((out.status, out.stdout, out.stderr))
    }

    fn spawn(&self, a: &[OsString], command: &str) -> Result<Child> {
        Command::new(&self.program)
            .args(a)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| match source.kind() {
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

fn convert_args(job: &ConvertJob<'_>) -> Vec<OsString> {
    let mut a = args([
        "convert",
        "-p",
        "-f",
        job.src_format.as_str(),
        "-O",
        job.dst_format.as_str(),
    ]);
    if job.compress {
        a.extend(args(["-c"]));
    }
    if let Some(rate) = job.rate_limit {
        a.extend(args(["-r"]));
        a.push(rate.to_string().into());
    }
    a.push(job.src.into());
    a.push(job.dst.into());
    a
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

fn check_status(op: &'static str, command: &str, status: ExitStatus, stderr: &[u8]) -> Result<()> {
    if status.success() {
        return Ok(());
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
