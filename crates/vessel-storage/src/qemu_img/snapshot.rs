//! Internal qcow2 snapshots through qemu-img: the offline half of VM snapshots.
//!
//! A VM snapshot is an internal snapshot with the same tag in every qcow2 disk of the VM (the way
//! Proxmox snapshots qcow2 disks). While the VM runs, QEMU makes and removes them over QMP (see
//! `vessel-qemu`); while it is stopped, these functions do it with `qemu-img snapshot`. Listing
//! reads `qemu-img info --output=json`, which needs no key, and with `force_share` also works on an
//! image a running QEMU holds open.
//!
//! Rules:
//! - `qemu-img snapshot` (7.2) has no `-f`: the image is always named with `--image-opts
//!   driver=qcow2,file.driver=file,file.filename=...`, so qemu-img never probes its format.
//! - Raw images have no snapshots: refused before qemu-img runs, naming the disk.
//! - Tags follow Vessel's name rules, and an all-digit tag is refused: QEMU looks snapshots up by
//!   ID first, so a tag `2` would name whatever snapshot has ID 2.
//! - qemu-img happily creates two snapshots with the same tag; creation first checks that the tag
//!   is new. Applying or deleting a tag that does not exist lists the tags that do.
//! - Encrypted (LUKS-in-qcow2) images: every `qemu-img snapshot` operation, even `-l`, opens the
//!   image for IO and so needs its key; pass it as `key` (it travels through a [`SecretPipe`]).
//!   Listing goes through `qemu-img info` and needs none.
//! - Create, apply and delete take QEMU's write lock (no `-U`): a running VM's disk is refused
//!   with [`SnapshotError::InUse`]; a running VM is snapshotted over QMP instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vessel_secrets::{SecretPipe, VolumeKey};

use super::{args, parse_json, render, secret_pipe, QemuImg, QemuImgError, SRC_SECRET};
use crate::format::Format;

/// One internal snapshot of an image, as `qemu-img info` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// QEMU's numeric ID (unique in the image; not stable across images).
    pub id: String,
    /// The tag.
    pub name: String,
    /// Bytes of saved VM state (RAM and devices); 0 for a disk-only snapshot. The state lives in
    /// one disk of the VM (the "vmstate" disk); the others show 0 for the same snapshot.
    pub vm_state_bytes: u64,
    /// When the snapshot was taken, seconds since the Unix epoch (host clock).
    pub date_secs: u64,
    /// Sub-second part of the date.
    pub date_nanos: u32,
    /// The guest's clock (QEMU's `vm_clock`: how long the VM had run) at the snapshot, in
    /// nanoseconds; 0 for a snapshot taken offline.
    pub vm_clock_nanos: u64,
}

impl SnapshotInfo {
    /// Whether the snapshot holds the running state (memory and devices) too.
    pub fn has_vm_state(&self) -> bool {
        self.vm_state_bytes > 0
    }
}

/// One disk of a VM, for the operations that act on all of a VM's disks.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotDisk<'a> {
    pub path: &'a Path,
    pub format: Format,
    /// The key of an encrypted volume.
    pub key: Option<&'a VolumeKey>,
}

/// What went wrong with a snapshot operation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid snapshot name: {0}")]
    InvalidTag(String),
    #[error(
        "{path} is a raw disk; snapshots need qcow2 (convert the volume with `qemu-img convert \
         -O qcow2` or detach it before snapshotting the VM)"
    )]
    NeedsQcow2 { path: PathBuf },
    #[error("{path} has no snapshot {tag:?}; its snapshots are: {}", list_or_none(.existing))]
    NotFound {
        path: PathBuf,
        tag: String,
        existing: Vec<String>,
    },
    #[error("{path} already has a snapshot {tag:?}; choose another name or delete it first")]
    Exists { path: PathBuf, tag: String },
    #[error(
        "{path} is in use by a running VM (QEMU holds its write lock); snapshot a running VM \
         through QEMU, or stop it first"
    )]
    InUse { path: PathBuf },
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
}

fn list_or_none(tags: &[String]) -> String {
    if tags.is_empty() {
        "(none)".to_string()
    } else {
        tags.join(", ")
    }
}

/// Checks a snapshot tag: Vessel's name rules (letters, digits, '-', '_', '.', starts with a
/// letter or digit, at most 63 characters, no '..') and not all digits, which QEMU would take
/// for a snapshot ID.
pub fn validate_snapshot_tag(tag: &str) -> Result<(), String> {
    vessel_core::validate_name("snapshot", tag)?;
    if tag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "snapshot name {tag:?} is all digits, which QEMU takes for a snapshot ID; add a \
             letter, e.g. 'snap{tag}'"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), SnapshotError> {
    validate_snapshot_tag(tag).map_err(SnapshotError::InvalidTag)
}

fn need_qcow2(path: &Path, format: Format) -> Result<(), SnapshotError> {
    match format {
        Format::Qcow2 => Ok(()),
        Format::Raw => Err(SnapshotError::NeedsQcow2 {
            path: path.to_path_buf(),
        }),
    }
}

/// What `qemu-img snapshot` does.
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Apply,
    Delete,
}

impl Op {
    fn flag(self) -> &'static str {
        match self {
            Op::Create => "-c",
            Op::Apply => "-a",
            Op::Delete => "-d",
        }
    }
}

/// The `qemu-img snapshot` arguments for one operation on a qcow2 image, and the pipe to pass.
fn snapshot_args(
    op: Op,
    path: &Path,
    tag: &str,
    key: Option<&VolumeKey>,
) -> Result<(Vec<OsString>, Vec<SecretPipe>), SnapshotError> {
    let Some(text) = path.to_str() else {
        return Err(QemuImgError::Unsupported {
            path: path.to_path_buf(),
            reason: "a snapshotted image's path must be UTF-8 (it goes into --image-opts)"
                .to_string(),
        }
        .into());
    };
    let mut opts = format!(
        "driver=qcow2,file.driver=file,file.filename={}",
        text.replace(',', ",,")
    );
    let mut a = args(["snapshot", "-q", op.flag(), tag]);
    let mut pipes = Vec::new();
    if let Some(key) = key {
        let pipe = secret_pipe(SRC_SECRET, key)?;
        a.extend(args(["--object"]));
        a.push(pipe.object_arg().into());
        opts.push_str(&format!(",encrypt.key-secret={}", pipe.id()));
        pipes.push(pipe);
    }
    a.extend(args(["--image-opts"]));
    a.push(opts.into());
    Ok((a, pipes))
}

/// The part of `qemu-img info --output=json` that lists snapshots.
#[derive(Debug, Deserialize)]
struct RawSnapshots {
    #[serde(default)]
    snapshots: Vec<RawSnapshot>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawSnapshot {
    id: String,
    name: String,
    #[serde(default)]
    vm_state_size: u64,
    #[serde(default)]
    date_sec: u64,
    #[serde(default)]
    date_nsec: u32,
    #[serde(default)]
    vm_clock_sec: u64,
    #[serde(default)]
    vm_clock_nsec: u64,
}

impl From<RawSnapshot> for SnapshotInfo {
    fn from(raw: RawSnapshot) -> Self {
        SnapshotInfo {
            id: raw.id,
            name: raw.name,
            vm_state_bytes: raw.vm_state_size,
            date_secs: raw.date_sec,
            date_nanos: raw.date_nsec,
            vm_clock_nanos: raw
                .vm_clock_sec
                .saturating_mul(1_000_000_000)
                .saturating_add(raw.vm_clock_nsec),
        }
    }
}

/// Parses the `snapshots` array of `qemu-img info --output=json` (or of QMP's `ImageInfo`, which
/// has the same shape), oldest first.
pub fn parse_snapshots(info: &serde_json::Value) -> Result<Vec<SnapshotInfo>, serde_json::Error> {
    let raw = RawSnapshots::deserialize(info)?;
    Ok(raw.snapshots.into_iter().map(SnapshotInfo::from).collect())
}

/// What qemu-img 7.2 prints when another process (a running QEMU) holds the image's lock.
fn is_lock_error(e: &QemuImgError) -> bool {
    matches!(e, QemuImgError::Failed { stderr, .. }
        if stderr.contains("Failed to get") && stderr.contains("lock"))
}

impl QemuImg {
    /// The image's internal snapshots, oldest first. Raw images have none (an empty list). With
    /// `force_share` (`-U`) this also reads an image a running VM holds open; without it such an
    /// image is refused with [`SnapshotError::InUse`]. Needs no key, even for encrypted images.
    pub async fn snapshot_list(
        &self,
        path: &Path,
        format: Format,
        force_share: bool,
    ) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        if format == Format::Raw {
            return Ok(Vec::new());
        }
        let mut a = args(["info", "--output=json", "-f", format.as_str()]);
        if force_share {
            a.insert(1, "-U".into());
        }
        a.push(path.into());
        let command = render(&a);
        let out = self
            .run("info", a, Vec::new())
            .await
            .map_err(|e| in_use(path, e))?;
        let raw: RawSnapshots = parse_json("info", &command, &out)?;
        Ok(raw.snapshots.into_iter().map(SnapshotInfo::from).collect())
    }

    /// Takes an internal snapshot `tag` of a stopped VM's qcow2 disk. Refuses a tag the image
    /// already has (qemu-img itself would add a second snapshot with the same tag).
    pub async fn snapshot_create(
        &self,
        path: &Path,
        format: Format,
        tag: &str,
        key: Option<&VolumeKey>,
    ) -> Result<(), SnapshotError> {
        check_tag(tag)?;
        need_qcow2(path, format)?;
        let existing = self.snapshot_list(path, format, false).await?;
        if existing.iter().any(|s| s.name == tag) {
            return Err(SnapshotError::Exists {
                path: path.to_path_buf(),
                tag: tag.to_string(),
            });
        }
        self.snapshot_op(Op::Create, path, tag, key).await
    }

    /// Reverts a stopped VM's qcow2 disk to snapshot `tag` (the snapshot stays).
    pub async fn snapshot_apply(
        &self,
        path: &Path,
        format: Format,
        tag: &str,
        key: Option<&VolumeKey>,
    ) -> Result<(), SnapshotError> {
        check_tag(tag)?;
        need_qcow2(path, format)?;
        self.require_snapshot(path, format, tag).await?;
        self.snapshot_op(Op::Apply, path, tag, key).await
    }

    /// Deletes snapshot `tag` from a stopped VM's qcow2 disk.
    pub async fn snapshot_delete(
        &self,
        path: &Path,
        format: Format,
        tag: &str,
        key: Option<&VolumeKey>,
    ) -> Result<(), SnapshotError> {
        check_tag(tag)?;
        need_qcow2(path, format)?;
        self.require_snapshot(path, format, tag).await?;
        self.snapshot_op(Op::Delete, path, tag, key).await
    }

    /// Snapshots every disk of a stopped VM, all or nothing: every disk is checked first (qcow2,
    /// tag new), and if one fails the snapshots already taken are deleted again.
    pub async fn snapshot_create_all(
        &self,
        disks: &[SnapshotDisk<'_>],
        tag: &str,
    ) -> Result<(), SnapshotError> {
        check_tag(tag)?;
        for d in disks {
            need_qcow2(d.path, d.format)?;
        }
        for d in disks {
            let existing = self.snapshot_list(d.path, d.format, false).await?;
            if existing.iter().any(|s| s.name == tag) {
                return Err(SnapshotError::Exists {
                    path: d.path.to_path_buf(),
                    tag: tag.to_string(),
                });
            }
        }
        for (i, d) in disks.iter().enumerate() {
            if let Err(e) = self.snapshot_op(Op::Create, d.path, tag, d.key).await {
                for done in &disks[..i] {
                    if let Err(undo) = self.snapshot_op(Op::Delete, done.path, tag, done.key).await
                    {
                        tracing::warn!(path = %done.path.display(), error = %undo,
                            "could not remove a partial snapshot");
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reverts every disk of a stopped VM to `tag`. Every disk must have it; that is checked for
    /// all of them before any is reverted.
    pub async fn snapshot_apply_all(
        &self,
        disks: &[SnapshotDisk<'_>],
        tag: &str,
    ) -> Result<(), SnapshotError> {
        check_tag(tag)?;
        for d in disks {
            need_qcow2(d.path, d.format)?;
        }
        for d in disks {
            self.require_snapshot(d.path, d.format, tag).await?;
        }
        for d in disks {
            self.snapshot_op(Op::Apply, d.path, tag, d.key).await?;
        }
        Ok(())
    }

    /// Deletes `tag` from every disk of a stopped VM that has it (a delete cut short leaves some
    /// disks without it; running it again finishes the job). An error if no disk has it.
    pub async fn snapshot_delete_all(
        &self,
        disks: &[SnapshotDisk<'_>],
        tag: &str,
    ) -> Result<(), SnapshotError> {
        check_tag(tag)?;
        let mut holders = Vec::new();
        let mut first_missing = None;
        for d in disks.iter().filter(|d| d.format == Format::Qcow2) {
            match self.require_snapshot(d.path, d.format, tag).await {
                Ok(()) => holders.push(d),
                Err(e @ SnapshotError::NotFound { .. }) => {
                    first_missing.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if holders.is_empty() {
            return Err(first_missing.unwrap_or_else(|| SnapshotError::NotFound {
                path: disks
                    .first()
                    .map(|d| d.path.to_path_buf())
                    .unwrap_or_default(),
                tag: tag.to_string(),
                existing: Vec::new(),
            }));
        }
        for d in holders {
            self.snapshot_op(Op::Delete, d.path, tag, d.key).await?;
        }
        Ok(())
    }

    /// `NotFound` (with the tags the image has) unless the image has snapshot `tag`.
    async fn require_snapshot(
        &self,
        path: &Path,
        format: Format,
        tag: &str,
    ) -> Result<(), SnapshotError> {
        let existing = self.snapshot_list(path, format, false).await?;
        if existing.iter().any(|s| s.name == tag) {
            return Ok(());
        }
        Err(SnapshotError::NotFound {
            path: path.to_path_buf(),
            tag: tag.to_string(),
            existing: existing.into_iter().map(|s| s.name).collect(),
        })
    }

    async fn snapshot_op(
        &self,
        op: Op,
        path: &Path,
        tag: &str,
        key: Option<&VolumeKey>,
    ) -> Result<(), SnapshotError> {
        let (a, pipes) = snapshot_args(op, path, tag, key)?;
        self.run("snapshot", a, pipes)
            .await
            .map(drop)
            .map_err(|e| in_use(path, e))
    }
}

fn in_use(path: &Path, e: QemuImgError) -> SnapshotError {
    if is_lock_error(&e) {
        SnapshotError::InUse {
            path: path.to_path_buf(),
        }
    } else {
        SnapshotError::QemuImg(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_name_rules_and_are_never_numeric() {
        for ok in ["before-upgrade", "s1", "2024-01-01", "a.b_c", "1a"] {
            assert_eq!(validate_snapshot_tag(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("12", "all digits"),
            ("0", "all digits"),
            ("-x", "start with"),
            ("a..b", "'..'"),
            ("a b", "' '"),
            ("a,b", "','"),
        ] {
            let err = validate_snapshot_tag(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(validate_snapshot_tag(&"s".repeat(64)).is_err());
    }

    #[test]
    fn snapshot_args_name_the_driver_and_escape_commas() {
        let (a, pipes) = snapshot_args(Op::Apply, Path::new("/p/a,b.qcow2"), "s1", None).unwrap();
        let a: Vec<_> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            [
                "snapshot",
                "-q",
                "-a",
                "s1",
                "--image-opts",
                "driver=qcow2,file.driver=file,file.filename=/p/a,,b.qcow2"
            ]
        );
        assert!(pipes.is_empty());
    }

    #[test]
    fn encrypted_images_get_the_key_through_a_secret_object() {
        let key = VolumeKey::generate().unwrap();
        let (a, pipes) =
            snapshot_args(Op::Create, Path::new("/p/e.qcow2"), "s1", Some(&key)).unwrap();
        let joined = a
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(pipes.len(), 1);
        assert!(
            joined.contains("--object secret,id=sec0,file=/dev/fd/"),
            "{joined}"
        );
        assert!(joined.ends_with(",encrypt.key-secret=sec0"), "{joined}");
        assert!(!joined.contains(key.luks_passphrase().as_str()));
    }

    #[test]
    fn snapshots_parse_from_qemu_img_json() {
        let json = serde_json::json!({
            "format": "qcow2",
            "snapshots": [
                {"icount": 0, "vm-clock-nsec": 240368986, "name": "s1", "date-sec": 1795844094,
                 "date-nsec": 900428000, "vm-clock-sec": 8, "id": "1", "vm-state-size": 0},
                {"vm-clock-nsec": 3, "name": "m1", "date-sec": 5, "date-nsec": 0,
                 "vm-clock-sec": 0, "id": "2", "vm-state-size": 95601424}
            ]
        });
        let list = parse_snapshots(&json).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "s1");
        assert_eq!(list[0].vm_clock_nanos, 8_240_368_986);
        assert!(!list[0].has_vm_state());
        assert!(list[1].has_vm_state());
        assert!(parse_snapshots(&serde_json::json!({"format": "raw"}))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn not_found_lists_the_existing_tags() {
        let e = SnapshotError::NotFound {
            path: "/p/d.qcow2".into(),
            tag: "zz".into(),
            existing: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "/p/d.qcow2 has no snapshot \"zz\"; its snapshots are: a, b"
        );
    }
}
