//! Whether an imported file is a disk image Vessel can safely store.
//!
//! The same rules as [`QemuImg::validate_image`](crate::QemuImg::validate_image), with one
//! difference: a qcow2's metadata may end up to one cluster past the end of the file. qemu-img
//! reports `image-end-offset` rounded up to a whole cluster, and a compressed qcow2 (what
//! `qemu-img convert -c` and Vessel's own exports write) ends in the middle of its last cluster,
//! so the exact comparison refuses every compressed image as "truncated". A file cut anywhere
//! before its last cluster is still refused.

use std::path::Path;

use crate::format::{detect_format, Format};
use crate::qemu_img::{ImageInfo, QemuImg, QemuImgError};
use crate::size::SECTOR_SIZE;

/// Why validation failed.
#[derive(Debug)]
pub(crate) enum Invalid {
    /// The file is not a usable image; the reason says why.
    NotAnImage(String),
    /// qemu-img itself could not be run.
    QemuImg(QemuImgError),
}

/// The image's description when it is a self-contained, intact raw or qcow2 image.
pub(crate) async fn validate(qemu_img: &QemuImg, path: &Path) -> Result<ImageInfo, Invalid> {
    let io = |source| {
        Invalid::QemuImg(QemuImgError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let format = detect_format(path).await.map_err(io)?;
    let len = tokio::fs::metadata(path).await.map_err(io)?.len();
    if len == 0 {
        return Err(Invalid::NotAnImage("it is empty".to_string()));
    }
    // Every disk is a whole number of sectors; a file that is not is almost certainly not a
    // disk image (a text file, an error page, a cut-off transfer).
    if format == Format::Raw && len % SECTOR_SIZE != 0 {
        return Err(Invalid::NotAnImage(format!(
            "as a raw image its size, {len} bytes, would have to be a multiple of 512; it is not \
             a disk image or it is incomplete"
        )));
    }
    let info = qemu_img
        .info(path, Some(format))
        .await
        .map_err(refused_by_qemu_img)?;
    self_contained(&info).map_err(Invalid::NotAnImage)?;
    if format == Format::Qcow2 {
        let report = qemu_img
            .check(path, format)
            .await
            .map_err(refused_by_qemu_img)?;
        let cluster = info.cluster_size.unwrap_or(65536).max(SECTOR_SIZE);
        // Past the last cluster, or past the end with errors (references beyond the file).
        let past_end =
            |end: &u64| *end > len.next_multiple_of(cluster) || (*end > len && !report.is_clean());
        if let Some(end) = report.image_end_offset.filter(past_end) {
            return Err(Invalid::NotAnImage(format!(
                "it is truncated: the file is {len} bytes but its qcow2 metadata reaches {end} \
                 bytes; copy or download it again"
            )));
        }
        if !report.is_clean() {
            return Err(Invalid::NotAnImage(format!(
                "qemu-img check found {} corruption(s) and {} check error(s); get a fresh copy \
                 or try `qemu-img check -r all` on a copy",
                report.corruptions, report.check_errors
            )));
        }
    }
    Ok(info)
}

/// qemu-img refusing to open the file means the file is bad, not that qemu-img is.
fn refused_by_qemu_img(e: QemuImgError) -> Invalid {
    match e {
        // qemu-img's message can quote the file (feature names, file names from its header),
        // which the caller may not be allowed to read: it goes to the daemon's log only.
        QemuImgError::Failed { stderr, .. } => {
            tracing::info!(stderr = %stderr.trim(), "qemu-img refused an imported file");
            Invalid::NotAnImage(
                "qemu-img cannot read it (a damaged header, or features QEMU does not support; \
                 the daemon's log has qemu-img's message)"
                    .to_string(),
            )
        }
        QemuImgError::InvalidImage { reason, .. } => Invalid::NotAnImage(reason),
        other => Invalid::QemuImg(other),
    }
}

fn self_contained(info: &ImageInfo) -> Result<(), String> {
    if info.backing_file.is_some() {
        return Err(
            "it has a backing file; an image must be self-contained: flatten it with \
             `qemu-img convert -O qcow2` first"
                .to_string(),
        );
    }
    if info.data_file.is_some() {
        return Err("its data lives in an external data file; an image must be \
             self-contained: flatten it with `qemu-img convert -O qcow2` first"
            .to_string());
    }
    if info.encrypted {
        return Err(
            "it is encrypted, and Vessel has no key for it; an image must be unencrypted: \
             decrypt it with `qemu-img convert --object secret,... --image-opts ... -O qcow2` \
             first (volumes made from it can then be encrypted with their own keys)"
                .to_string(),
        );
    }
    if info.corrupt {
        return Err(
            "QEMU marked it corrupt; repair it with `qemu-img check -r all` or get a fresh copy"
                .to_string(),
        );
    }
    Ok(())
}
