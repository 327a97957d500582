//! Roles and the permissions they grant.

use serde::{Deserialize, Serialize};

/// What a role may do in a project. Ordered: every role may do what the ones below it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only: lists, shows, statistics, logs.
    Viewer,
    /// The viewer's reads, plus creating, changing and driving VMs, volumes and images, and
    /// consoles; no identity, project or host administration.
    Operator,
    /// Everything, including users, tokens, quotas, the audit log and the host.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "role {other:?} is not one of viewer, operator, admin"
            )),
        }
    }

    /// Whether this role grants `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        self >= permission.least_role()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing an API route needs. The names (`vm.read`...) appear in 403 answers and the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permission {
    VmRead,
    VmCreate,
    VmEdit,
    VmDelete,
    VmLifecycle,
    VmConsole,
    VmSnapshot,
    StorageRead,
    StorageWrite,
    ImageRead,
    ImageWrite,
    OperationRead,
    OperationCancel,
    EventRead,
    NetworkRead,
    NetworkWrite,
    HostRead,
    HostStats,
    HostAdmin,
    HostFiles,
    PoolAdmin,
    ProjectRead,
    ProjectAdmin,
    IdentityAdmin,
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 25] = [
        Permission::VmRead,
        Permission::VmCreate,
        Permission::VmEdit,
        Permission::VmDelete,
        Permission::VmLifecycle,
        Permission::VmConsole,
        Permission::VmSnapshot,
        Permission::StorageRead,
        Permission::StorageWrite,
        Permission::ImageRead,
        Permission::ImageWrite,
        Permission::OperationRead,
        Permission::OperationCancel,
        Permission::EventRead,
        Permission::NetworkRead,
        Permission::NetworkWrite,
        Permission::HostRead,
        Permission::HostStats,
        Permission::HostAdmin,
        Permission::HostFiles,
        Permission::PoolAdmin,
        Permission::ProjectRead,
        Permission::ProjectAdmin,
        Permission::IdentityAdmin,
        Permission::AuditRead,
    ];

    /// The name shown to users, e.g. in "missing permission vm.lifecycle".
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::VmRead => "vm.read",
            Permission::VmCreate => "vm.create",
            Permission::VmEdit => "vm.edit",
            Permission::VmDelete => "vm.delete",
            Permission::VmLifecycle => "vm.lifecycle",
            Permission::VmConsole => "vm.console",
            Permission::VmSnapshot => "vm.snapshot",
            Permission::StorageRead => "storage.read",
            Permission::StorageWrite => "storage.write",
            Permission::ImageRead => "image.read",
            Permission::ImageWrite => "image.write",
            Permission::OperationRead => "operation.read",
            Permission::OperationCancel => "operation.cancel",
            Permission::EventRead => "event.read",
            Permission::NetworkRead => "network.read",
            Permission::NetworkWrite => "network.write",
            Permission::HostRead => "host.read",
            Permission::HostStats => "host.stats",
            Permission::HostAdmin => "host.admin",
            Permission::HostFiles => "host.files",
            Permission::PoolAdmin => "pool.admin",
            Permission::ProjectRead => "project.read",
            Permission::ProjectAdmin => "project.admin",
            Permission::IdentityAdmin => "identity.admin",
            Permission::AuditRead => "audit.read",
        }
    }

    /// The least role that grants this permission: the role table in one place.
    pub fn least_role(self) -> Role {
        use Permission::*;
        match self {
            VmRead | StorageRead | ImageRead | OperationRead | EventRead | NetworkRead
            | HostRead | ProjectRead => Role::Viewer,
            VmCreate | VmEdit | VmDelete | VmLifecycle | VmConsole | VmSnapshot | StorageWrite
            | ImageWrite | OperationCancel | NetworkWrite => Role::Operator,
            HostStats | HostAdmin | HostFiles | PoolAdmin | ProjectAdmin | IdentityAdmin
            | AuditRead => Role::Admin,
        }
    }

    /// Whether the permission changes something (its requests are always audited).
    pub fn is_read(self) -> bool {
        use Permission::*;
        matches!(
            self,
            VmRead
                | StorageRead
                | ImageRead
                | OperationRead
                | EventRead
                | NetworkRead
                | HostRead
                | HostStats
                | ProjectRead
                | AuditRead
        )
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_only_read_and_operators_administer_nothing() {
        for p in Permission::ALL {
            assert_eq!(
                Role::Viewer.allows(p),
                p.least_role() == Role::Viewer,
                "{p}"
            );
            assert!(Role::Admin.allows(p), "{p}");
        }
        assert!(Role::Operator.allows(Permission::VmLifecycle));
        assert!(Role::Operator.allows(Permission::VmConsole));
        assert!(!Role::Operator.allows(Permission::IdentityAdmin));
        assert!(!Role::Operator.allows(Permission::ProjectAdmin));
        assert!(!Role::Viewer.allows(Permission::VmLifecycle));
    }

    #[test]
    fn every_viewer_permission_is_a_read() {
        for p in Permission::ALL {
            if p.least_role() == Role::Viewer {
                assert!(p.is_read(), "{p}");
            }
        }
    }

    #[test]
    fn roles_parse_from_their_names() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        assert!(Role::parse("root")
            .unwrap_err()
            .contains("viewer, operator, admin"));
    }
}
