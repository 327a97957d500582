//! Request fields that name something on the daemon's host: a file (VM kernel, initrd, disk;
//! import sources; export destinations; pool directories) or a URL the daemon fetches.
//!
//! The permission table says which *routes* a role may call; this table says which *arguments*
//! reach the host. A field of this table that names a host file needs [`Permission::HostFiles`]
//! on the host (admin on `*`, and root on the unix socket), unless the daemon's configuration
//! opens a directory of its [`DirKind`] to project operators and the file is inside it. A URL is
//! left to the download's own address check (public addresses only, unless configured).
//!
//! One table, so that the e2e test can walk the OpenAPI document against it: a request field
//! whose description says it names something on the daemon's host must have a row here.
//!
//! [`Permission::HostFiles`]: crate::Permission::HostFiles

/// Which allow-listed directories of the daemon's configuration may open a field to project
/// operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// `kernel_dirs`: kernels and initrds to boot.
    Kernel,
    /// `import_dirs`: files to import as images or volumes.
    Import,
    /// `export_dirs`: where exports may be written.
    Export,
    /// No directory opens it: host admins only.
    HostOnly,
}

/// One field that names something on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostField {
    pub method: &'static str,
    /// The route's path template, as in [`crate::ROUTES`].
    pub path: &'static str,
    /// The top-level field of the JSON body.
    pub field: &'static str,
    pub dirs: DirKind,
    /// The field may also be an `http://` or `https://` URL (checked by the download instead).
    pub url: bool,
}

const fn file(
    method: &'static str,
    path: &'static str,
    field: &'static str,
    dirs: DirKind,
) -> HostField {
    HostField {
        method,
        path,
        field,
        dirs,
        url: false,
    }
}

const fn file_or_url(
    method: &'static str,
    path: &'static str,
    field: &'static str,
    dirs: DirKind,
) -> HostField {
    HostField {
        url: true,
        ..file(method, path, field, dirs)
    }
}

/// Every request field that names a file on the daemon's host (or a URL it fetches).
#[rustfmt::skip]
pub const HOST_FIELDS: &[HostField] = &[
    file("POST", "/v1/vms", "kernel", DirKind::Kernel),
    file("POST", "/v1/vms", "initrd", DirKind::Kernel),
    file("POST", "/v1/vms", "disk", DirKind::HostOnly),
    file("PATCH", "/v1/vms/{name}", "kernel", DirKind::Kernel),
    file("PATCH", "/v1/vms/{name}", "initrd", DirKind::Kernel),
    file("PATCH", "/v1/vms/{name}", "disk", DirKind::HostOnly),
    file_or_url("POST", "/v1/images", "source", DirKind::Import),
    file_or_url("POST", "/v1/pools/{pool}/imports", "source", DirKind::Import),
    file("POST", "/v1/pools/{pool}/volumes/{name}/export", "path", DirKind::Export),
    file("POST", "/v1/pools", "path", DirKind::HostOnly),
];

/// Whether `value` is a URL rather than a file path (it has a scheme). Only `http` and `https`
/// are downloaded; other schemes are refused by the import.
pub fn is_url(value: &str) -> bool {
    value.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    })
}

/// The host files a request body names: each field of [`HOST_FIELDS`] for this route that holds
/// a non-empty string which is not a URL (where URLs are allowed). A body that is not a JSON
/// object names nothing (the handler refuses it).
pub fn named_files<'a>(
    method: &str,
    template: &str,
    body: &'a serde_json::Value,
) -> Vec<(&'static HostField, &'a str)> {
    HOST_FIELDS
        .iter()
        .filter(|f| f.method == method && f.path == template)
        .filter_map(|f| {
            let value = body.get(f.field)?.as_str()?;
            let is_a_url = f.url && is_url(value);
            (!value.is_empty() && !is_a_url).then_some((f, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_row_is_a_route_of_the_permission_table() {
        for f in HOST_FIELDS {
            let route = crate::ROUTES
                .iter()
                .find(|r| r.method == f.method && r.path == f.path);
            assert!(route.is_some(), "{f:?}");
        }
    }

    #[test]
    fn paths_are_named_files_and_urls_are_not() {
        let body = json!({"name": "a", "kernel": "/boot/vmlinuz", "initrd": null, "disk": ""});
        let named = named_files("POST", "/v1/vms", &body);
        assert_eq!(named.len(), 1);
        assert_eq!((named[0].0.field, named[0].1), ("kernel", "/boot/vmlinuz"));
        let url = json!({"name": "i", "source": "https://example.com/d.qcow2"});
        assert!(named_files("POST", "/v1/images", &url).is_empty());
        let file = json!({"name": "i", "source": "/etc/shadow"});
        assert_eq!(named_files("POST", "/v1/images", &file).len(), 1);
        let relative = json!({"name": "i", "source": "etc/shadow"});
        assert_eq!(named_files("POST", "/v1/images", &relative).len(), 1);
        assert!(named_files("GET", "/v1/images", &file).is_empty());
    }

    #[test]
    fn only_strings_with_a_scheme_are_urls() {
        assert!(is_url("http://x/y"));
        assert!(is_url("ftp://x/y"));
        assert!(is_url("file:///etc/shadow"));
        assert!(!is_url("/srv/a://b"));
        assert!(!is_url("://x"));
        assert!(!is_url("/etc/shadow"));
    }
}
