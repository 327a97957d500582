//! cloud-init NoCloud seed images, built in pure Rust.
//!
//! cloud-init's NoCloud datasource looks for a file system labelled `cidata` (or `CIDATA`) and
//! reads the files `user-data` and `meta-data` (both required; an empty `user-data` is fine) and,
//! if present, `network-config` and `vendor-data` from its root. Vessel attaches such an image to
//! a VM as a small read-only disk.
//!
//! The file system is ISO 9660 with Rock Ridge and Joliet names, volume identifier `cidata`, like
//! `genisoimage -volid cidata -joliet -rock` (what cloud-localds and Proxmox produce). ISO 9660
//! rather than FAT because it is read-only by design, has no geometry to choose, and a writer for
//! one directory of a few files is a few hundred lines (the private `iso` module); no external tool
//! runs at VM creation, so the daemon stays one binary.
//!
//! The files are validated before the image is built ([`validate_user_data`],
//! [`validate_network_config`], [`MetaData::validate`]), so mistakes are reported to the user with
//! what was wrong and how to fix it, instead of surfacing as a VM that silently boots without its
//! configuration.

mod iso;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest accepted `user-data` (and `vendor-data`): 64 KiB. cloud-init has no NoCloud limit, but
/// configuration this large belongs in an image or an `#include` URL; the cap keeps seed images
/// and API request bodies small.
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// Largest accepted `network-config`: 64 KiB, far above any real network configuration.
pub const MAX_NETWORK_CONFIG_BYTES: usize = 64 * 1024;

/// Longest accepted `instance-id`. cloud-init uses it as a directory name under
/// `/var/lib/cloud/instances/`, so it must stay well under NAME_MAX (255).
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// Volume identifier of the seed image; cloud-init matches `cidata` or `CIDATA`.
pub const VOLUME_ID: &str = "cidata";

/// Headers cloud-init recognises at the start of user-data (its "user-data formats"). Anything
/// else is treated as opaque data and ignored, which is never what the user meant.
const USER_DATA_HEADERS: &[&str] = &[
    "#cloud-config", // also covers #cloud-config-archive and #cloud-config-jsonp
    "#!",
    "#include", // also covers #include-once
    "#cloud-boothook",
    "#part-handler",
    "## template: jinja",
];

/// Start of a MIME multi-part user-data, matched case-insensitively like a MIME header.
const MULTIPART_HEADER: &str = "content-type: multipart/";

/// Errors from validating seed files and building or writing the seed image.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A seed file's content is not acceptable; `reason` says what was wrong and how to fix it.
    #[error("invalid {file}: {reason}")]
    Invalid {
        /// `user-data`, `meta-data`, `network-config` or `vendor-data`.
        file: &'static str,
        reason: String,
    },
    /// A seed file is over its size cap.
    #[error("{file} is {size} bytes, over the limit of {max} bytes; make it smaller (move large content into the image, or fetch it at boot with '#include URL' or a script)")]
    TooLarge {
        file: &'static str,
        size: usize,
        max: usize,
    },
    /// Writing the image file failed (no partial file is left behind).
    #[error("cannot write the seed image {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `meta-data` file: the instance identity. cloud-init runs its once-per-instance modules
/// again whenever `instance_id` changes, so it must be stable for a VM (and unique across VMs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaData {
    /// Printable ASCII without spaces, 1 to [`MAX_INSTANCE_ID_LEN`] characters.
    pub instance_id: String,
    /// The guest's hostname: one RFC 1123 label (letters, digits, `-`; 1 to 63 characters; no
    /// `-` at either end).
    pub local_hostname: String,
}

impl MetaData {
    /// Checks both fields; see the field docs for the rules.
    pub fn validate(&self) -> Result<(), SeedError> {
        validate_instance_id(&self.instance_id)?;
        validate_hostname(&self.local_hostname)
    }

    /// Renders the YAML `meta-data` file, after [`validate`](Self::validate). Both values are
    /// double-quoted: an unquoted hostname such as `no`, `null` or `1234` would be read by YAML
    /// as a boolean, null or number rather than a string.
    pub fn render(&self) -> Result<String, SeedError> {
        self.validate()?;
        Ok(format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_quote(&self.instance_id),
            yaml_quote(&self.local_hostname)
        ))
    }
}

/// The files of a NoCloud seed.
///
/// `Debug` shows sizes only: user-data often carries passwords, keys or tokens that must not end
/// up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SeedFiles {
    /// `user-data`; `None` writes an empty file (cloud-init requires the file to exist).
    pub user_data: Option<Vec<u8>>,
    pub meta_data: MetaData,
    /// `network-config` (network config version 1 or 2); `None`: cloud-init's default (DHCP on
    /// the first NIC).
    pub network_config: Option<Vec<u8>>,
    /// `vendor-data`: same formats as user-data, merged below it.
    pub vendor_data: Option<Vec<u8>>,
}

impl fmt::Debug for SeedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = |v: &Option<Vec<u8>>| v.as_ref().map(|b| format!("{} bytes", b.len()));
        f.debug_struct("SeedFiles")
            .field("user_data", &len(&self.user_data))
            .field("meta_data", &self.meta_data)
            .field("network_config", &len(&self.network_config))
            .field("vendor_data", &len(&self.vendor_data))
            .finish()
    }
}

/// Checks user-data: at most [`MAX_USER_DATA_BYTES`], UTF-8 text, starting with a header
/// cloud-init recognises (`#cloud-config`, `#!`, `#include`, `#cloud-boothook`, `#part-handler`,
/// `## template: jinja` or `Content-Type: multipart/...`).
///
/// The YAML of `#cloud-config` is not parsed: `serde_yaml` is deprecated and its forks are not a
/// dependency worth carrying for a pre-check; cloud-init itself reports YAML errors in the guest
/// (`cloud-init schema --system`). Gzip-compressed user-data, which cloud-init also accepts, is
/// rejected by the UTF-8 rule.
pub fn validate_user_data(bytes: &[u8]) -> Result<(), SeedError> {
    validate_user_data_like("user-data", bytes, MAX_USER_DATA_BYTES)
}

/// Checks network-config: at most [`MAX_NETWORK_CONFIG_BYTES`], UTF-8 text, and a `version:` key
/// (network config v1 and v2 both require one). This is a sanity check, not a YAML parser: it
/// catches user-data or an empty file passed as network-config, not every malformed document.
pub fn validate_network_config(bytes: &[u8]) -> Result<(), SeedError> {
    const FILE: &str = "network-config";
    let text = utf8_text(FILE, bytes, MAX_NETWORK_CONFIG_BYTES)?;
    // `version:` as a YAML key at the start of a line, or `"version"` anywhere (JSON, which is
    // YAML too).
    let has_version = text.contains("\"version\"")
        || text
            .lines()
            .any(|line| line.trim_start().starts_with("version:"));
    if !has_version {
        return Err(SeedError::Invalid {
            file: FILE,
            reason: "no 'version:' key found; network-config must be network config version 1 \
                     or 2 YAML, e.g. 'version: 2' followed by 'ethernets:'"
                .into(),
        });
    }
    Ok(())
}

/// Builds the seed image (ISO 9660, volume `cidata`) after validating every file.
pub fn build_seed_image(files: &SeedFiles) -> Result<Vec<u8>, SeedError> {
    let meta_data = files.meta_data.render()?;
    if let Some(user_data) = &files.user_data {
        validate_user_data(user_data)?;
    }
    if let Some(network_config) = &files.network_config {
        validate_network_config(network_config)?;
    }
    if let Some(vendor_data) = &files.vendor_data {
        validate_user_data_like("vendor-data", vendor_data, MAX_USER_DATA_BYTES)?;
    }

    let mut entries = vec![
        iso::IsoFile {
            name: "meta-data",
            data: meta_data.as_bytes(),
        },
        iso::IsoFile {
            name: "user-data",
            data: files.user_data.as_deref().unwrap_or_default(),
        },
    ];
    if let Some(network_config) = &files.network_config {
        entries.push(iso::IsoFile {
            name: "network-config",
            data: network_config,
        });
    }
    if let Some(vendor_data) = &files.vendor_data {
        entries.push(iso::IsoFile {
            name: "vendor-data",
            data: vendor_data,
        });
    }
    // Dates in the image are the build time, as with any mastering tool; a clock before 1970
    // only makes the dates wrong.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(iso::build(
        VOLUME_ID,
        &entries,
        iso::Timestamp::from_unix(now),
    ))
}

/// Builds the seed image and writes it to `path` atomically, with mode 0600 (user-data may hold
/// secrets). The image goes to a temporary file in the same directory, which is fsynced and then
/// renamed over `path` (replacing an older seed), and the directory is fsynced so the rename
/// survives a crash. On any error, nothing is left behind and an existing `path` is untouched.
pub fn write_seed_image(files: &SeedFiles, path: &Path) -> Result<(), SeedError> {
    let image = build_seed_image(files)?;
    let io_err = |source| SeedError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // tempfile creates the file with O_EXCL and mode 0600, and removes it when dropped, i.e. on
    // every early return below.
    let mut tmp = tempfile::Builder::new()
        .prefix(".seed-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err)?;
    set_private_mode(tmp.as_file()).map_err(io_err)?;
    tmp.write_all(&image).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err)
}

/// Mode 0600 explicitly rather than relying on tempfile's default.
#[cfg(unix)]
fn set_private_mode(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_private_mode(_file: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

/// Size cap and UTF-8, shared by all text files.
fn utf8_text<'a>(file: &'static str, bytes: &'a [u8], max: usize) -> Result<&'a str, SeedError> {
    if bytes.len() > max {
        return Err(SeedError::TooLarge {
            file,
            size: bytes.len(),
            max,
        });
    }
    if bytes.is_empty() {
        return Err(SeedError::Invalid {
            file,
            reason: "the file is empty; leave it out instead".into(),
        });
    }
    std::str::from_utf8(bytes).map_err(|e| SeedError::Invalid {
        file,
        reason: format!(
            "not UTF-8 text (invalid byte at offset {}); cloud-init {file} must be text \
             (compressed or binary data is not accepted here)",
            e.valid_up_to()
        ),
    })
}

fn validate_user_data_like(file: &'static str, bytes: &[u8], max: usize) -> Result<(), SeedError> {
    let text = utf8_text(file, bytes, max)?;
    let known = USER_DATA_HEADERS.iter().any(|h| text.starts_with(h))
        || text
            .get(..MULTIPART_HEADER.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(MULTIPART_HEADER));
    if known {
        return Ok(());
    }
    let first_line = text.lines().next().unwrap_or("");
    let shown: String = first_line.chars().take(40).collect();
    let ellipsis = if shown.len() < first_line.len() {
        "..."
    } else {
        ""
    };
    let hint = if text.starts_with('\u{feff}') {
        " (a byte order mark: save the file as UTF-8 without BOM)"
    } else if text.starts_with(char::is_whitespace) {
        " (remove the leading whitespace or blank lines: the header must be the very first bytes)"
    } else if text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('#')
    {
        " (check the header's spelling; it is case-sensitive)"
    } else {
        ""
    };
    Err(SeedError::Invalid {
        file,
        reason: format!(
            "{file} must start with '#cloud-config' (YAML) or '#!' (a script), or another \
             cloud-init header ('#include', '#cloud-boothook', '#part-handler', \
             '## template: jinja', 'Content-Type: multipart/mixed'); the file starts with \
             {shown:?}{ellipsis}{hint}"
        ),
    })
}

fn validate_instance_id(id: &str) -> Result<(), SeedError> {
    let invalid = |reason: String| SeedError::Invalid {
        file: "meta-data",
        reason,
    };
    if id.is_empty() {
        return Err(invalid(
            "instance-id is empty; give each VM a stable, unique id".into(),
        ));
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(invalid(format!(
            "instance-id is {} characters, over the limit of {MAX_INSTANCE_ID_LEN}",
            id.len()
        )));
    }
    // Printable ASCII without spaces: no newline can inject YAML keys, and the id stays usable
    // as the directory name cloud-init makes of it.
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "instance-id {id:?} contains {c:?}; only printable ASCII characters without spaces \
             or line breaks are allowed"
        )));
    }
    if id.contains('/') {
        return Err(invalid(format!(
            "instance-id {id:?} contains '/'; cloud-init uses it as a directory name"
        )));
    }
    Ok(())
}

fn validate_hostname(name: &str) -> Result<(), SeedError> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > 63 {
        Some(format!("is {} characters, over 63", name.len()))
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        Some(format!("contains {c:?}"))
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("starts or ends with '-'".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(SeedError::Invalid {
            file: "meta-data",
            reason: format!(
                "local-hostname {name:?} {p}; a hostname is one label (RFC 1123) of 1 to 63 \
                 letters, digits and '-', not starting or ending with '-'"
            ),
        }),
    }
}

/// YAML double-quoted scalar. Validated values hold printable ASCII only, so `\` and `"` are the
/// only characters to escape.
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, host: &str) -> MetaData {
        MetaData {
            instance_id: id.into(),
            local_hostname: host.into(),
        }
    }

    fn reason(e: SeedError) -> String {
        e.to_string()
    }

    #[test]
    fn meta_data_renders_quoted_yaml() {
        let m = meta("iid-0f3a", "web-1");
        assert_eq!(
            m.render().unwrap(),
            "instance-id: \"iid-0f3a\"\nlocal-hostname: \"web-1\"\n"
        );
        // YAML would read these unquoted as boolean / null / integer.
        assert_eq!(
            meta("i", "no").render().unwrap(),
            "instance-id: \"i\"\nlocal-hostname: \"no\"\n"
        );
        assert!(meta("i", "1234").render().unwrap().ends_with("\"1234\"\n"));
    }

    #[test]
    fn instance_id_quotes_and_backslashes_are_escaped() {
        let m = meta(r#"a"b\c:#{}"#, "h");
        assert_eq!(
            m.render().unwrap(),
            "instance-id: \"a\\\"b\\\\c:#{}\"\nlocal-hostname: \"h\"\n"
        );
    }

    #[test]
    fn newline_in_instance_id_is_rejected() {
        let e = reason(
            meta("iid\nlocal-hostname: evil", "good")
                .render()
                .unwrap_err(),
        );
        assert!(e.contains("instance-id"), "{e}");
        assert!(e.contains("'\\n'"), "{e}");
        for bad in ["a b", "a\tb", "a\rb", "é", "", "a/b"] {
            assert!(meta(bad, "h").validate().is_err(), "{bad:?} accepted");
        }
        assert!(meta(&"x".repeat(MAX_INSTANCE_ID_LEN), "h")
            .validate()
            .is_ok());
        assert!(meta(&"x".repeat(MAX_INSTANCE_ID_LEN + 1), "h")
            .validate()
            .is_err());
    }

    #[test]
    fn hostnames_follow_rfc_1123_labels() {
        for good in ["a", "vm1", "web-01", "1234", "A-Z", &"a".repeat(63)] {
            assert!(meta("i", good).validate().is_ok(), "{good:?} rejected");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a b",
            "a\nb",
            "ä",
            &"a".repeat(64),
        ] {
            let e = meta("i", bad).validate().unwrap_err().to_string();
            assert!(
                e.contains("local-hostname") && e.contains("RFC 1123"),
                "{e}"
            );
        }
    }

    #[test]
    fn user_data_headers() {
        for good in [
            "#cloud-config\nruncmd: []\n",
            "#!/bin/sh\necho hi\n",
            "#include\nhttps://example.com/a\n",
            "#cloud-boothook\n#!/bin/sh\n",
            "#part-handler\n",
            "## template: jinja\n#cloud-config\n",
            "Content-Type: multipart/mixed; boundary=\"x\"\n",
            "content-type: MULTIPART/mixed; boundary=x\n",
        ] {
            assert!(validate_user_data(good.as_bytes()).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn wrong_header_says_what_and_how() {
        let e = reason(validate_user_data(b"users:\n  - name: bob\n").unwrap_err());
        assert!(e.starts_with("invalid user-data: user-data must start with '#cloud-config' (YAML) or '#!' (a script)"), "{e}");
        assert!(e.contains("the file starts with \"users:\""), "{e}");

        let e = reason(validate_user_data(b"  #cloud-config\n").unwrap_err());
        assert!(e.contains("leading whitespace"), "{e}");
        let e = reason(validate_user_data("\u{feff}#cloud-config\n".as_bytes()).unwrap_err());
        assert!(e.contains("byte order mark"), "{e}");
        let e = reason(validate_user_data(b"#Cloud-Config\n").unwrap_err());
        assert!(e.contains("case-sensitive"), "{e}");
        let long = format!("{}\n", "x".repeat(100));
        let e = reason(validate_user_data(long.as_bytes()).unwrap_err());
        assert!(e.contains(&format!("\"{}\"...", "x".repeat(40))), "{e}");
    }

    #[test]
    fn user_data_size_utf8_and_empty() {
        let mut big = b"#cloud-config\n".to_vec();
        big.resize(MAX_USER_DATA_BYTES, b'#');
        assert!(validate_user_data(&big).is_ok());
        big.push(b'\n');
        let e = validate_user_data(&big).unwrap_err();
        assert!(
            matches!(e, SeedError::TooLarge { file: "user-data", size, max }
                if size == MAX_USER_DATA_BYTES + 1 && max == MAX_USER_DATA_BYTES),
            "{e}"
        );

        let e = reason(validate_user_data(b"#cloud-config\n\xff\xfe").unwrap_err());
        assert!(e.contains("not UTF-8") && e.contains("offset 14"), "{e}");
        // gzip magic
        assert!(validate_user_data(&[0x1f, 0x8b, 8, 0]).is_err());
        let e = reason(validate_user_data(b"").unwrap_err());
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn network_config_needs_version() {
        assert!(validate_network_config(b"version: 2\nethernets: {}\n").is_ok());
        assert!(validate_network_config(b"network:\n  version: 1\n  config: []\n").is_ok());
        assert!(validate_network_config(br#"{"version": 2, "ethernets": {}}"#).is_ok());
        let e = reason(validate_network_config(b"#cloud-config\nruncmd: []\n").unwrap_err());
        assert!(
            e.starts_with("invalid network-config: no 'version:' key"),
            "{e}"
        );
        assert!(validate_network_config(b"\xc3\x28").is_err());
        let big = format!("version: 2\n{}", "#".repeat(MAX_NETWORK_CONFIG_BYTES));
        assert!(matches!(
            validate_network_config(big.as_bytes()),
            Err(SeedError::TooLarge {
                file: "network-config",
                ..
            })
        ));
    }

    #[test]
    fn build_validates_every_file() {
        let good = SeedFiles {
            user_data: Some(b"#cloud-config\n".to_vec()),
            meta_data: meta("iid-1", "vm1"),
            network_config: Some(b"version: 2\n".to_vec()),
            vendor_data: Some(b"#cloud-config\n".to_vec()),
        };
        assert!(build_seed_image(&good).is_ok());

        let mut bad = good.clone();
        bad.vendor_data = Some(b"hello".to_vec());
        let e = reason(build_seed_image(&bad).unwrap_err());
        assert!(
            e.starts_with("invalid vendor-data: vendor-data must start"),
            "{e}"
        );

        let mut bad = good.clone();
        bad.network_config = Some(b"ethernets: {}".to_vec());
        assert!(build_seed_image(&bad).is_err());

        let mut bad = good.clone();
        bad.user_data = Some(b"runcmd: []".to_vec());
        assert!(build_seed_image(&bad).is_err());

        let mut bad = good;
        bad.meta_data.local_hostname = "bad_name".into();
        assert!(build_seed_image(&bad).is_err());
    }

    #[test]
    fn debug_does_not_show_user_data() {
        let files = SeedFiles {
            user_data: Some(b"#cloud-config\npassword: hunter2\n".to_vec()),
            meta_data: meta("iid-1", "vm1"),
            network_config: None,
            vendor_data: None,
        };
        let shown = format!("{files:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("32 bytes"), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn write_is_atomic_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.iso");
        let files = SeedFiles {
            user_data: Some(b"#cloud-config\n".to_vec()),
            meta_data: meta("iid-1", "vm1"),
            network_config: None,
            vendor_data: None,
        };
        write_seed_image(&files, &path).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len() % iso::SECTOR, 0);
        assert_eq!(
            &written[16 * iso::SECTOR + 1..16 * iso::SECTOR + 6],
            b"CD001"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // A failing build leaves the existing image untouched and no temporary file behind.
        let mut bad = files.clone();
        bad.user_data = Some(b"oops".to_vec());
        assert!(write_seed_image(&bad, &path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), written);
        // So does a failing write (the target is a directory: the rename fails).
        let target_dir = dir.path().join("taken");
        std::fs::create_dir(&target_dir).unwrap();
        std::fs::write(target_dir.join("x"), b"x").unwrap();
        let e = write_seed_image(&files, &target_dir).unwrap_err();
        assert!(matches!(e, SeedError::Io { .. }), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["seed.iso", "taken"]);
    }
}
