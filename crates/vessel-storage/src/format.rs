//! Disk image formats and format detection from magic bytes.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// The image formats Vessel stores volumes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
}

/// The first four bytes of every qcow2 file (`QFI\xfb`).
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

impl Format {
    /// The name qemu-img uses (`-f`, `-O`, `-F`), which is also the volume file's extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// The file extension of a volume in this format.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    /// All formats, for listing and for parsing errors.
    pub const ALL: [Format; 2] = [Format::Raw, Format::Qcow2];
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(format!(
                "unsupported image format {other:?}; Vessel stores disks as raw or qcow2 \
                 (convert other formats with qemu-img convert -O qcow2)"
            )),
        }
    }
}

/// Detects an image's format from its magic bytes: qcow2 starts with `QFI\xfb`, anything else is
/// raw. Done here instead of by qemu-img's probing so that the decision is ours and never relies
/// on what a guest may have written into a raw disk's first sector.
pub async fn detect_format(path: &Path) -> io::Result<Format> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut magic = [0u8; 4];
    let mut filled = 0;
    // A short file is simply not qcow2; read until 4 bytes or end of file.
    while filled < magic.len() {
        let n = file.read(&mut magic[filled..]).await?;
        if n == 0 {
            return Ok(Format::Raw);
        }
        filled += n;
    }
    Ok(format_from_magic(&magic))
}

/// QEMU refuses backing file names longer than this (`qcow2.c`), so a longer one means a damaged
/// header and is not read.
const MAX_BACKING_NAME: u32 = 1023;

/// Reads the backing file name from a qcow2 header, without running qemu-img: cheap enough to do
/// for every volume of a pool, and it works on a volume whose other metadata is damaged.
/// `None` for a qcow2 image without a backing file and for anything that is not qcow2.
pub async fn read_qcow2_backing_file(path: &Path) -> io::Result<Option<String>> {
    use tokio::io::AsyncSeekExt;

    let mut file = tokio::fs::File::open(path).await?;
    // Header: magic (4), version (4), backing_file_offset (8, big-endian), backing_file_size (4).
    let mut header = [0u8; 20];
    if file.read_exact(&mut header).await.is_err() || header[..4] != QCOW2_MAGIC {
        return Ok(None);
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    if len > MAX_BACKING_NAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("qcow2 header names a backing file of {len} bytes; the header is damaged"),
        ));
    }
    file.seek(io::SeekFrom::Start(offset)).await?;
    let mut name = vec![0u8; len as usize];
    file.read_exact(&mut name).await?;
    String::from_utf8(name)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "backing file name is not UTF-8"))
}

/// The size the guest sees, read from the file without running qemu-img: for qcow2, the
/// header's `size` field (bytes 24..32, big-endian; also right for LUKS inside qcow2); for raw,
/// the file's length. The format is the volume's known one, never probed: a guest can write a
/// qcow2 header at the start of its raw disk. Cheap enough for every volume of every pool.
pub async fn read_virtual_size(path: &Path, format: Format) -> io::Result<u64> {
    let mut file = tokio::fs::File::open(path).await?;
    if format == Format::Raw {
        return Ok(file.metadata().await?.len());
    }
    let mut header = [0u8; 32];
    file.read_exact(&mut header).await?;
    if header[..4] != QCOW2_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} has no qcow2 header", path.display()),
        ));
    }
    Ok(u64::from_be_bytes(
        header[24..32].try_into().expect("8 bytes"),
    ))
}

fn format_from_magic(magic: &[u8; 4]) -> Format {
    if *magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_through_their_names() {
        for format in Format::ALL {
            assert_eq!(format.as_str().parse::<Format>(), Ok(format));
        }
        assert!("vmdk"
            .parse::<Format>()
            .unwrap_err()
            .contains("qemu-img convert"));
    }

    #[tokio::test]
    async fn virtual_size_comes_from_the_qcow2_header_or_the_raw_length() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.raw");
        std::fs::write(&raw, vec![0u8; 3000]).unwrap();
        assert_eq!(read_virtual_size(&raw, Format::Raw).await.unwrap(), 3000);
        assert!(read_virtual_size(&raw, Format::Qcow2).await.is_err());
        let qcow2 = dir.path().join("b.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow2)
            .arg("5M")
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(
            read_virtual_size(&qcow2, Format::Qcow2).await.unwrap(),
            5 << 20
        );
        // A raw disk whose guest wrote a qcow2 header: still the file's length.
        let mut planted = std::fs::read(&qcow2).unwrap();
        planted.resize(4096, 0);
        std::fs::write(&raw, &planted).unwrap();
        assert_eq!(read_virtual_size(&raw, Format::Raw).await.unwrap(), 4096);
    }

    #[test]
    fn only_the_qcow2_magic_means_qcow2() {
        assert_eq!(format_from_magic(b"QFI\xfb"), Format::Qcow2);
        assert_eq!(format_from_magic(b"QFI\xfa"), Format::Raw);
        assert_eq!(format_from_magic(b"\0\0\0\0"), Format::Raw);
    }
}
