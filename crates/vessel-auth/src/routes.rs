//! The permission table: every API route, the permission it needs and where the project of its
//! target comes from. One table, so that a reviewer sees all of it at once. A route missing here
//! is denied (fail closed). The daemon's tests (`access/route_table.rs`) walk its routers and
//! its OpenAPI document against this table and name any route one of the three lacks.

use crate::Permission::{self, *};

/// Where the project a route acts on comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The host, or something that spans projects: needs the permission on project `*`.
    Host,
    /// No single project: the permission in any project will do (lists are filtered to the
    /// caller's projects; objects without a project of their own, such as pools).
    Any,
    /// The VM named by the `{name}` path parameter.
    Vm,
    /// The image named by the `{name}` path parameter.
    Image,
    /// The volume named by the `{pool}` and `{name}` path parameters (`default` when it has no
    /// project of its own).
    Volume,
    /// The network named by the `{name}` path parameter.
    Network,
    /// The operation whose id is the `{id}` path parameter (in the project of what it works on).
    Operation,
    /// The project named by the `{name}` path parameter.
    Project,
    /// The `project` field of the JSON body (`default` when absent): creates.
    Body,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// The path template, as in the OpenAPI document (`/v1/vms/{name}`).
    pub path: &'static str,
    /// `None`: any authenticated caller (who am I, the API description).
    pub permission: Option<Permission>,
    pub target: Target,
}

const fn r(
    method: &'static str,
    path: &'static str,
    permission: Permission,
    target: Target,
) -> Route {
    Route {
        method,
        path,
        permission: Some(permission),
        target,
    }
}

use Target::{Any, Body, Host, Image, Network, Operation, Project, Vm, Volume};

/// Every route of the API. Keep in the order of the OpenAPI document's sections.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    Route { method: "GET", path: "/v1/openapi.json", permission: None, target: Any },
    Route { method: "GET", path: "/v1/whoami", permission: None, target: Any },
    // VMs
    r("GET", "/v1/vms", VmRead, Any),
    r("POST", "/v1/vms", VmCreate, Body),
    r("GET", "/v1/vms/{name}", VmRead, Vm),
    r("PATCH", "/v1/vms/{name}", VmEdit, Vm),
    r("DELETE", "/v1/vms/{name}", VmDelete, Vm),
    r("POST", "/v1/vms/{name}/start", VmLifecycle, Vm),
    r("POST", "/v1/vms/{name}/stop", VmLifecycle, Vm),
    r("POST", "/v1/vms/{name}/kill", VmLifecycle, Vm),
    r("POST", "/v1/vms/{name}/reboot", VmLifecycle, Vm),
    r("POST", "/v1/vms/{name}/pause", VmLifecycle, Vm),
    r("POST", "/v1/vms/{name}/resume", VmLifecycle, Vm),
    r("GET", "/v1/vms/{name}/stats", VmRead, Vm),
    r("GET", "/v1/vms/{name}/guest", VmRead, Vm),
    r("POST", "/v1/vms/{name}/disks", VmEdit, Vm),
    r("DELETE", "/v1/vms/{name}/disks/{pool}/{volume}", VmEdit, Vm),
    r("GET", "/v1/vms/{name}/snapshots", VmRead, Vm),
    r("POST", "/v1/vms/{name}/snapshots", VmSnapshot, Vm),
    r("POST", "/v1/vms/{name}/snapshots/{snapshot}/revert", VmSnapshot, Vm),
    r("DELETE", "/v1/vms/{name}/snapshots/{snapshot}", VmSnapshot, Vm),
    r("GET", "/v1/vms/{name}/console/log", VmConsole, Vm),
    r("GET", "/v1/vms/{name}/console", VmConsole, Vm),
    // Statistics of every VM and the host span projects.
    r("GET", "/v1/stats", HostStats, Host),
    r("GET", "/v1/host/stats", HostStats, Host),
    r("GET", "/metrics", HostStats, Host),
    // Storage
    r("GET", "/v1/pools", StorageRead, Any),
    r("POST", "/v1/pools", PoolAdmin, Host),
    r("GET", "/v1/pools/{name}", StorageRead, Any),
    r("DELETE", "/v1/pools/{name}", PoolAdmin, Host),
    r("GET", "/v1/pools/{pool}/volumes", StorageRead, Any),
    r("POST", "/v1/pools/{pool}/volumes", StorageWrite, Body),
    r("GET", "/v1/pools/{pool}/volumes/{name}", StorageRead, Volume),
    r("DELETE", "/v1/pools/{pool}/volumes/{name}", StorageWrite, Volume),
    r("POST", "/v1/pools/{pool}/volumes/{name}/resize", StorageWrite, Volume),
    // A clone belongs to its source's project.
    r("POST", "/v1/pools/{pool}/volumes/{name}/clone", StorageWrite, Volume),
    r("POST", "/v1/pools/{pool}/imports", StorageWrite, Body),
    r("POST", "/v1/pools/{pool}/volumes/{name}/export", StorageWrite, Volume),
    r("GET", "/v1/images", ImageRead, Any),
    r("POST", "/v1/images", ImageWrite, Body),
    r("GET", "/v1/images/{name}", ImageRead, Image),
    r("DELETE", "/v1/images/{name}", ImageWrite, Image),
    // Operations, events, host
    r("POST", "/v1/operations/{id}/cancel", OperationCancel, Operation),
    r("GET", "/v1/events", EventRead, Any),
    r("GET", "/v1/operations", OperationRead, Any),
    r("GET", "/v1/operations/{id}", OperationRead, Operation),
    r("GET", "/v1/host", HostRead, Any),
    r("GET", "/v1/host/check", HostRead, Any),
    r("POST", "/v1/host/master-key/rotate", HostAdmin, Host),
    // Identities
    r("GET", "/v1/users", IdentityAdmin, Host),
    r("POST", "/v1/users", IdentityAdmin, Host),
    r("GET", "/v1/users/{name}", IdentityAdmin, Host),
    r("DELETE", "/v1/users/{name}", IdentityAdmin, Host),
    r("POST", "/v1/users/{name}/certs", IdentityAdmin, Host),
    r("GET", "/v1/tokens", IdentityAdmin, Host),
    r("POST", "/v1/tokens", IdentityAdmin, Host),
    r("DELETE", "/v1/tokens/{id}", IdentityAdmin, Host),
    // Networks and NICs. A NIC is part of its VM: adding one needs the VM's edit permission
    // (and the network must be in the VM's project).
    r("GET", "/v1/networks", NetworkRead, Any),
    r("POST", "/v1/networks", NetworkWrite, Body),
    r("GET", "/v1/networks/{name}", NetworkRead, Network),
    r("PATCH", "/v1/networks/{name}", NetworkWrite, Network),
    r("DELETE", "/v1/networks/{name}", NetworkWrite, Network),
    r("GET", "/v1/vms/{name}/nics", VmRead, Vm),
    r("POST", "/v1/vms/{name}/nics", VmEdit, Vm),
    r("DELETE", "/v1/vms/{name}/nics/{nic}", VmEdit, Vm),
    // Projects and quotas
    r("GET", "/v1/projects", ProjectRead, Any),
    r("POST", "/v1/projects", ProjectAdmin, Host),
    r("GET", "/v1/projects/{name}", ProjectRead, Project),
    r("DELETE", "/v1/projects/{name}", ProjectAdmin, Host),
    r("PUT", "/v1/projects/{name}/quota", ProjectAdmin, Host),
    // Audit
    r("GET", "/v1/audit", AuditRead, Host),
    r("GET", "/v1/audit/verify", AuditRead, Host),
];

/// A route matched against a request path, with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub route: &'static Route,
    pub params: Vec<(&'static str, String)>,
}

impl Matched {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The row for `method` and `path` (without the query). Where two templates match, the one
/// with more literal segments wins (`/v1/host/check` over a `{name}`), as in the router.
/// `None` means the route is not in the table and must be denied.
pub fn lookup(method: &str, path: &str) -> Option<Matched> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, Matched)> = None;
    for route in ROUTES.iter().filter(|r| r.method == method) {
        if let Some((literals, params)) = match_template(route.path, &segments) {
            if best.as_ref().is_none_or(|(l, _)| literals > *l) {
                best = Some((literals, Matched { route, params }));
            }
        }
    }
    best.map(|(_, m)| m)
}

/// The number of literal segments and the parameters, if `segments` fit `template`.
fn match_template(
    template: &'static str,
    segments: &[&str],
) -> Option<(usize, Vec<(&'static str, String)>)> {
    let parts: Vec<&'static str> = template.split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut literals = 0;
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if segment.is_empty() {
                return None;
            }
            params.push((name, percent_decode(segment)));
        } else if part == segment {
            literals += 1;
        } else {
            return None;
        }
    }
    Some((literals, params))
}

/// Decodes `%XX` escapes of a path segment or query value (names are plain ASCII; anything odd
/// is kept as is and then refused by the name checks of the handlers).
pub fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_the_route_and_its_parameters() {
        let m = lookup("POST", "/v1/vms/web1/start").unwrap();
        assert_eq!(m.route.permission, Some(VmLifecycle));
        assert_eq!(m.param("name"), Some("web1"));
        let m = lookup("DELETE", "/v1/vms/a/disks/p/v").unwrap();
        assert_eq!(m.param("volume"), Some("v"));
        assert_eq!(
            lookup("GET", "/v1/host/check").unwrap().route.path,
            "/v1/host/check"
        );
    }

    #[test]
    fn routes_missing_from_the_table_are_not_found() {
        assert!(lookup("GET", "/v1/no-such-route").is_none());
        assert!(lookup("PUT", "/v1/vms/a").is_none());
        assert!(lookup("GET", "/v1/vms/").is_none());
        assert!(lookup("GET", "/v1/vms/a/b/c/d/e").is_none());
    }

    #[test]
    fn the_table_has_no_duplicate_rows() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(!(a.method == b.method && a.path == b.path), "{a:?}");
            }
        }
    }

    #[test]
    fn escaped_segments_are_decoded() {
        assert_eq!(
            lookup("GET", "/v1/vms/a%2Db").unwrap().param("name"),
            Some("a-b")
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_method_and_path_is_looked_up_without_panicking(method in "[A-Z]{0,8}", path in ".{0,80}") {
            let _ = lookup(&method, &path);
        }

        #[test]
        fn every_template_filled_with_names_finds_its_own_row(
            index in 0..ROUTES.len(),
            names in proptest::collection::vec("x[a-z0-9%-]{0,10}", 4),
        ) {
            let route = &ROUTES[index];
            let mut i = 0;
            let path: Vec<String> = route.path.split('/').map(|part| {
                if part.starts_with('{') {
                    i += 1;
                    names[i - 1].clone()
                } else {
                    part.to_string()
                }
            }).collect();
            let matched = lookup(route.method, &path.join("/"));
            prop_assert_eq!(matched.map(|m| m.route.path), Some(route.path));
        }
    }
}
