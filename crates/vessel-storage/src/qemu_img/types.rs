//! What qemu-img reports, as typed values, and the parsing of its `--output=json`.
//!
//! Field names follow qemu-img 7.2's JSON (QAPI `ImageInfo`, `ImageCheck`, `BlockMeasureInfo`),
//! which uses kebab-case and omits fields that do not apply (no `backing-filename` without a
//! backing file, no `encrypted` unless encrypted, no `actual-size` for some protocols).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::Format;

/// One image as `qemu-img info` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image's file.
    pub path: PathBuf,
    pub format: Format,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes the file occupies on disk (sparse files and thin qcow2 occupy less than their size).
    pub actual_size: Option<u64>,
    pub cluster_size: Option<u64>,
    /// The backing file as written in the image (often relative to the image's directory).
    pub backing_file: Option<String>,
    /// The backing file resolved against the image's directory, the way QEMU opens it.
    pub backing_path: Option<PathBuf>,
    /// The backing file's format as recorded in the image.
    pub backing_format: Option<Format>,
    /// The image's data is encrypted (LUKS inside qcow2 for Vessel's encrypted volumes); opening
    /// it for IO needs its key, describing it does not.
    pub encrypted: bool,
    /// How a qcow2 image is encrypted, as qemu-img names it: `luks`, or `aes` for the legacy
    /// (insecure) qcow2 encryption that Vessel never creates.
    #[serde(default)]
    pub encryption_format: Option<String>,
    /// Set while a writer with lazy refcounts has the image open, or after it crashed.
    pub dirty: bool,
    /// qcow2's corrupt bit: QEMU found inconsistent metadata and refuses to write to the image.
    pub corrupt: bool,
    /// qcow2 external data file, if any: the guest's data lives in that other file.
    pub data_file: Option<String>,
}

/// The result of `qemu-img check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    #[serde(default)]
    pub check_errors: u64,
    #[serde(default)]
    pub corruptions: u64,
    #[serde(default)]
    pub leaks: u64,
    #[serde(default)]
    pub corruptions_fixed: u64,
    #[serde(default)]
    pub leaks_fixed: u64,
    /// Where the image's metadata says the file ends; beyond the file's length means truncation.
    pub image_end_offset: Option<u64>,
    pub total_clusters: Option<u64>,
    pub allocated_clusters: Option<u64>,
    pub fragmented_clusters: Option<u64>,
    pub compressed_clusters: Option<u64>,
}

impl CheckReport {
    /// No corruption and the check could look at everything. Leaks only waste space, so they do
    /// not make an image unusable.
    pub fn is_clean(&self) -> bool {
        self.check_errors == 0 && self.corruptions == 0
    }
}

/// The result of `qemu-img measure`: bytes a converted copy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Measurement {
    /// Bytes the copy needs as a thin image.
    pub required: u64,
    /// Bytes the copy needs with every cluster allocated.
    pub fully_allocated: u64,
}

/// `qemu-img info --output=json`, field for field.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct RawInfo {
    pub(crate) format: String,
    pub(crate) virtual_size: u64,
    pub(crate) actual_size: Option<u64>,
    pub(crate) cluster_size: Option<u64>,
    pub(crate) backing_filename: Option<String>,
    pub(crate) backing_filename_format: Option<String>,
    #[serde(default)]
    pub(crate) encrypted: bool,
    #[serde(default)]
    pub(crate) dirty_flag: bool,
    pub(crate) format_specific: Option<RawFormatSpecific>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawFormatSpecific {
    pub(crate) data: Option<RawQcow2Data>,
}

/// The qcow2 part of `format-specific.data`; other formats' fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct RawQcow2Data {
    #[serde(default)]
    pub(crate) corrupt: bool,
    pub(crate) data_file: Option<String>,
    pub(crate) encrypt: Option<RawEncrypt>,
}

/// `format-specific.data.encrypt` of an encrypted qcow2 image.
#[derive(Debug, Deserialize)]
pub(crate) struct RawEncrypt {
    pub(crate) format: String,
}

impl RawInfo {
    /// Turns qemu-img's report on the image at `path` into an [`ImageInfo`]. `Err` names a format
    /// Vessel does not handle.
    pub(crate) fn into_info(self, path: &Path) -> Result<ImageInfo, String> {
        let format: Format = self.format.parse()?;
        let backing_format = self
            .backing_filename_format
            .as_deref()
            .map(str::parse)
            .transpose()?;
        let qcow2 = self.format_specific.and_then(|s| s.data);
        let backing_path = self
            .backing_filename
            .as_deref()
            .map(|b| resolve_backing(path, b));
        Ok(ImageInfo {
            path: path.to_path_buf(),
            format,
            virtual_size: self.virtual_size,
            actual_size: self.actual_size,
            cluster_size: self.cluster_size,
            backing_file: self.backing_filename,
            backing_path,
            backing_format,
            encrypted: self.encrypted,
            encryption_format: qcow2
                .as_ref()
                .and_then(|d| d.encrypt.as_ref())
                .map(|e| e.format.clone()),
            dirty: self.dirty_flag,
            corrupt: qcow2.as_ref().is_some_and(|d| d.corrupt),
            data_file: qcow2.and_then(|d| d.data_file),
        })
    }
}

/// QEMU opens a relative backing file relative to the directory of the image that names it.
pub(crate) fn resolve_backing(image: &Path, backing: &str) -> PathBuf {
    let backing = Path::new(backing);
    if backing.is_absolute() {
        return backing.to_path_buf();
    }
    match image.parent() {
        Some(dir) => dir.join(backing),
        None => backing.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_img_7_2_info_json_is_understood() {
        let json = r#"{
            "backing-filename-format": "qcow2", "virtual-size": 67108864,
            "filename": "clone.qcow2", "cluster-size": 65536, "format": "qcow2",
            "actual-size": 200704,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
                "compression-type": "zlib", "lazy-refcounts": false, "refcount-bits": 16,
                "corrupt": false, "extended-l2": false}},
            "full-backing-filename": "base.qcow2", "backing-filename": "base.qcow2",
            "dirty-flag": false}"#;
        let raw: RawInfo = serde_json::from_str(json).unwrap();
        let info = raw.into_info(Path::new("/pool/clone.qcow2")).unwrap();
        assert_eq!(info.format, Format::Qcow2);
        assert_eq!(info.virtual_size, 64 << 20);
        assert_eq!(info.backing_path, Some(PathBuf::from("/pool/base.qcow2")));
        assert_eq!(info.backing_format, Some(Format::Qcow2));
        assert!(!info.encrypted && !info.dirty && !info.corrupt);
        assert_eq!(info.encryption_format, None);
    }

    #[test]
    fn a_luks_encrypted_qcow2_is_reported_as_encrypted() {
        // qemu-img 7.2, abridged (one keyslot of eight).
        let json = r#"{
            "virtual-size": 67108864, "filename": "e.qcow2", "cluster-size": 65536,
            "format": "qcow2", "actual-size": 2297856,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
                "compression-type": "zlib", "lazy-refcounts": false, "refcount-bits": 16,
                "encrypt": {"ivgen-alg": "plain64", "hash-alg": "sha256",
                    "cipher-alg": "aes-256", "uuid": "cc3d457f-ec7a-4600-b6ec-508d57eee976",
                    "format": "luks", "cipher-mode": "xts",
                    "slots": [{"active": true, "iters": 5116320, "key-offset": 4096,
                        "stripes": 4000}],
                    "payload-offset": 2068480, "master-key-iters": 1325463},
                "corrupt": false, "extended-l2": false}},
            "encrypted": true, "dirty-flag": false}"#;
        let raw: RawInfo = serde_json::from_str(json).unwrap();
        let info = raw.into_info(Path::new("/pool/e.qcow2")).unwrap();
        assert!(info.encrypted);
        assert_eq!(info.encryption_format.as_deref(), Some("luks"));
    }

    #[test]
    fn an_unsupported_format_is_named() {
        let json = r#"{"virtual-size": 1, "filename": "x", "format": "vmdk"}"#;
        let raw: RawInfo = serde_json::from_str(json).unwrap();
        assert!(raw.into_info(Path::new("x")).unwrap_err().contains("vmdk"));
    }

    #[test]
    fn absolute_backing_files_are_kept() {
        assert_eq!(
            resolve_backing(Path::new("/a/b.qcow2"), "/c/d.qcow2"),
            PathBuf::from("/c/d.qcow2")
        );
    }
}
