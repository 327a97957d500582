//! What an imported file's first bytes say it is, before qemu-img looks at it (see the module
//! documentation of [`crate::import`] for the rules).

use std::io::{self, Read};
use std::path::Path;

use crate::format::QCOW2_MAGIC;

/// How many leading bytes are judged.
pub(crate) const SNIFF_LEN: usize = 4096;

/// Reads up to [`SNIFF_LEN`] bytes from the start of `path`.
pub(crate) fn head(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(SNIFF_LEN);
    file.by_ref().take(SNIFF_LEN as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Why the file is refused, when its first bytes show it is not a raw or qcow2 disk image.
/// `None` means "go on" (qemu-img then judges qcow2 and the size of raw images).
pub(crate) fn refusal(head: &[u8]) -> Option<String> {
    if head.starts_with(&QCOW2_MAGIC) {
        let version = head
            .get(4..8)
            .map(|v| u32::from_be_bytes(v.try_into().expect("4 bytes")));
        return match version {
            Some(2 | 3) => qcow2_header_refusal(head),
            Some(v) => Some(format!(
                "it is a qcow image of version {v}, which Vessel does not store; convert it \
                 with `qemu-img convert -O qcow2 FILE OUT.qcow2` and import that"
            )),
            None => Some("it is a qcow2 header cut short; get a complete copy".to_string()),
        };
    }
    if let Some(kind) = foreign_format(head) {
        return Some(format!(
            "it is {kind}, not a raw or qcow2 disk image; convert it with \
             `qemu-img convert -O qcow2 FILE OUT.qcow2` and import that"
        ));
    }
    if let Some(kind) = archive(head) {
        return Some(format!(
            "it is {kind}, not a disk image; unpack the image inside it and import that"
        ));
    }
    if head.starts_with(b"LUKS\xba\xbe") {
        return Some(
            "it is a LUKS-encrypted container; Vessel imports unencrypted images (volumes made \
             from them can be encrypted with their own keys): decrypt it first"
                .to_string(),
        );
    }
    if looks_like_text(head) {
        // Never quote the bytes: the caller may not be allowed to read the source.
        let kind = if looks_like_html(head) {
            "an HTML page"
        } else {
            "text"
        };
        return Some(format!(
            "it is {kind}, not a disk image; if it came from a URL, the server probably sent an \
             error or download page instead of the image"
        ));
    }
    None
}

/// What a qcow2 header (version 2 or 3) says that makes the image unusable, read before any
/// qemu-img runs on it: qemu-img opens a backing file or an external data file named in the
/// header (CVE-2024-4467 was `qemu-img info` opening a crafted data file name), so an image that
/// names one is refused on its header alone.
fn qcow2_header_refusal(head: &[u8]) -> Option<String> {
    let be64 = |at: usize| {
        head.get(at..at + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    };
    let be32 = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    };
    let (Some(backing_offset), Some(crypt_method)) = (be64(8), be32(32)) else {
        return Some("it is a qcow2 header cut short; get a complete copy".to_string());
    };
    if backing_offset != 0 {
        return Some(
            "it has a backing file; an image must be self-contained: flatten it with \
             `qemu-img convert -O qcow2` first"
                .to_string(),
        );
    }
    if crypt_method != 0 {
        return Some(
            "it is encrypted, and Vessel has no key for it; an image must be unencrypted: \
             decrypt it with `qemu-img convert --object secret,... --image-opts ... -O qcow2` \
             first (volumes made from it can then be encrypted with their own keys)"
                .to_string(),
        );
    }
    // Version 3: incompatible feature bit 2 is "external data file".
    if be32(4) == Some(3) && be64(72).is_some_and(|features| features & (1 << 2) != 0) {
        return Some(
            "its data lives in an external data file; an image must be self-contained: \
             flatten it with `qemu-img convert -O qcow2` first"
                .to_string(),
        );
    }
    None
}

/// Disk image formats that qemu knows but Vessel does not store.
fn foreign_format(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| {
        head.get(offset..offset + magic.len())
            .is_some_and(|m| m == magic)
    };
    if at(0, b"KDMV") || at(0, b"COWD") {
        Some("a VMDK image")
    } else if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        Some("a VirtualBox VDI image")
    } else if at(0, b"vhdxfile") {
        Some("a VHDX image")
    } else if at(0, b"conectix") {
        Some("a VHD (vpc) image")
    } else if at(0, b"QED\0") {
        Some("a QED image")
    } else if at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt") {
        Some("a Parallels image")
    } else if at(0, b"Bochs Virtual HD Image") {
        Some("a Bochs image")
    } else {
        None
    }
}

/// Compressed files and archives that are often downloaded instead of the image inside them.
fn archive(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| {
        head.get(offset..offset + magic.len())
            .is_some_and(|m| m == magic)
    };
    if at(0, &[0x1f, 0x8b]) {
        Some("gzip-compressed (gunzip it)")
    } else if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz-compressed (unxz it)")
    } else if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd-compressed (unzstd it)")
    } else if at(0, b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        Some("bzip2-compressed (bunzip2 it)")
    } else if at(0, b"PK\x03\x04") {
        Some("a zip archive")
    } else if at(257, b"ustar") {
        Some("a tar archive")
    } else {
        None
    }
}

/// Valid UTF-8 without NUL bytes or control characters other than tab, newline, carriage
/// return, form feed and escape. A file that is cut in the middle of a multi-byte character at
/// the end of the sample still counts as text.
/// Whether text starts like an HTML document (after blanks), case-insensitively.
fn looks_like_html(head: &[u8]) -> bool {
    let start: Vec<u8> = head
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(15)
        .map(u8::to_ascii_lowercase)
        .collect();
    start.starts_with(b"<!doctype html")
        || start.starts_with(b"<html")
        || start.starts_with(b"<head")
}

pub(crate) fn looks_like_text(head: &[u8]) -> bool {
    if head.is_empty() {
        return false;
    }
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        // Only an incomplete character at the very end is forgiven.
        Err(e) if e.error_len().is_none() && head.len() - e.valid_up_to() < 4 => {
            std::str::from_utf8(&head[..e.valid_up_to()]).expect("valid prefix")
        }
        Err(_) => return false,
    };
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\x0c' | '\x1b'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_and_text_are_refused() {
        let html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n";
        let says = refusal(html).unwrap();
        assert!(
            says.contains("an HTML page") && !says.contains("404"),
            "{says}"
        );
        let shadow = b"root:*:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n";
        let says = refusal(shadow).unwrap();
        assert!(
            says.contains("it is text") && !says.contains("root"),
            "{says}"
        );
        assert!(refusal("caf\u{e9} \u{2603}\n".as_bytes()).is_some());
        assert!(refusal(b"# Disk DescriptorFile\nversion=1\n").is_some());
    }

    #[test]
    fn disks_are_not_text() {
        // A blank disk, an MBR with boot code, an ISO's zero system area.
        assert_eq!(refusal(&[0u8; 4096]), None);
        let mut mbr = vec![0u8; 512];
        mbr[0..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(refusal(&mbr), None);
        // Text followed by a NUL (a boot sector with a message) is binary.
        assert_eq!(refusal(b"Missing operating system\0\0\0"), None);
    }

    #[test]
    fn other_formats_and_archives_are_named() {
        let mut vdi = vec![0u8; 512];
        vdi[..8].copy_from_slice(b"<<< Orac");
        vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert!(refusal(&vdi).unwrap().contains("VDI"));
        assert!(refusal(b"KDMV\x01\0\0\0").unwrap().contains("VMDK"));
        assert!(refusal(b"\x1f\x8b\x08\0").unwrap().contains("gunzip"));
        let mut tar = vec![0u8; 512];
        tar[..8].copy_from_slice(b"disk.raw");
        tar[257..262].copy_from_slice(b"ustar");
        assert!(refusal(&tar).unwrap().contains("tar archive"));
        assert!(refusal(b"LUKS\xba\xbe\0\x02").unwrap().contains("LUKS"));
    }

    fn qcow2_header(version: u8) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[7] = version;
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_versions_2_and_3_go_on_and_version_1_is_refused() {
        assert_eq!(refusal(&qcow2_header(3)), None);
        assert_eq!(refusal(&qcow2_header(2)), None);
        assert!(refusal(&qcow2_header(1)).unwrap().contains("version 1"));
        assert!(refusal(&qcow2_header(3)[..20])
            .unwrap()
            .contains("cut short"));
    }

    #[test]
    fn qcow2_headers_naming_other_files_or_keys_are_refused() {
        let mut backing = qcow2_header(3);
        backing[15] = 104;
        assert!(refusal(&backing).unwrap().contains("backing file"));
        let mut data_file = qcow2_header(3);
        data_file[79] = 1 << 2;
        assert!(refusal(&data_file).unwrap().contains("external data file"));
        let mut encrypted = qcow2_header(3);
        encrypted[35] = 2;
        assert!(refusal(&encrypted).unwrap().contains("encrypted"));
    }
}
