//! Callers and their grants.

use serde::{Deserialize, Serialize};

use crate::{Permission, Role};

/// The project every object belongs to unless it says otherwise; it always exists.
pub const DEFAULT_PROJECT: &str = "default";
/// A grant on this project covers every project and the host itself.
pub const ALL_PROJECTS: &str = "*";
/// The built-in identity of a caller on the daemon's unix socket (root or the socket's group):
/// admin everywhere, as before there were identities.
pub const ROOT: &str = "root";

/// A role in a project (or in every project, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub project: String,
    pub role: Role,
}

impl Grant {
    pub fn new(project: impl Into<String>, role: Role) -> Self {
        Grant {
            project: project.into(),
            role,
        }
    }

    /// Parses `project=role` (or just `role`, meaning every project).
    pub fn parse(text: &str) -> Result<Grant, String> {
        let (project, role) = match text.split_once('=') {
            Some((project, role)) => (project, role),
            None => (ALL_PROJECTS, text),
        };
        if project != ALL_PROJECTS {
            crate::validate_project_name(project)?;
        }
        Ok(Grant::new(project, Role::parse(role)?))
    }

    fn covers(&self, project: &str) -> bool {
        self.project == ALL_PROJECTS || self.project == project
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.project, self.role)
    }
}

/// Where a permission is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The host itself and what spans projects (users, projects, the audit log): needs a grant
    /// on `*`.
    Host,
    /// One project.
    Project(&'a str),
    /// Some project: lists (filtered to the caller's projects afterwards) and lookups of objects
    /// that do not exist.
    AnyProject,
}

/// Why a request is refused: which permission is missing, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{identity} lacks permission {permission} {place}{held}")]
pub struct Denied {
    pub identity: String,
    pub permission: Permission,
    place: String,
    held: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub grants: Vec<Grant>,
}

impl Identity {
    /// The unix-socket caller.
    pub fn root() -> Identity {
        Identity {
            name: ROOT.into(),
            grants: vec![Grant::new(ALL_PROJECTS, Role::Admin)],
        }
    }

    /// The highest role held in `project` (grants on `*` count everywhere).
    pub fn role_in(&self, project: &str) -> Option<Role> {
        self.grants
            .iter()
            .filter(|g| g.covers(project))
            .map(|g| g.role)
            .max()
    }

    /// The role held on `*`.
    fn host_role(&self) -> Option<Role> {
        self.grants
            .iter()
            .filter(|g| g.project == ALL_PROJECTS)
            .map(|g| g.role)
            .max()
    }

    /// Whether `permission` is held at `scope`; the error names what is missing.
    pub fn check(&self, permission: Permission, scope: Scope<'_>) -> Result<(), Denied> {
        let (role, place) = match scope {
            Scope::Host => (
                self.host_role(),
                "on the host (a grant on project *)".to_string(),
            ),
            Scope::Project(p) => (self.role_in(p), format!("in project {p:?}")),
            Scope::AnyProject => (
                self.grants.iter().map(|g| g.role).max(),
                "in any project".to_string(),
            ),
        };
        if role.is_some_and(|r| r.allows(permission)) {
            return Ok(());
        }
        Err(Denied {
            identity: self.name.clone(),
            permission,
            place,
            held: match role {
                Some(role) => format!(
                    " (its role there is {role}; {permission} needs {})",
                    permission.least_role()
                ),
                None => " (it has no role there)".into(),
            },
        })
    }

    /// The projects whose objects this caller may read with `permission`; `None` means all.
    pub fn readable_projects(&self, permission: Permission) -> Option<Vec<String>> {
        if self.host_role().is_some_and(|r| r.allows(permission)) {
            return None;
        }
        Some(
            self.grants
                .iter()
                .filter(|g| g.role.allows(permission))
                .map(|g| g.project.clone())
                .collect(),
        )
    }

    /// Narrows this identity to a token's scope: per scoped grant, the lesser of the token's
    /// role and the user's own role there. A token never grants more than its user has.
    pub fn restrict(&self, scope: &[Grant]) -> Identity {
        let mut grants = Vec::new();
        for wanted in scope {
            let held = if wanted.project == ALL_PROJECTS {
                self.host_role()
            } else {
                self.role_in(&wanted.project)
            };
            if let Some(held) = held {
                grants.push(Grant::new(wanted.project.clone(), held.min(wanted.role)));
            }
        }
        Identity {
            name: self.name.clone(),
            grants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            grants: vec![
                Grant::new("dev", Role::Operator),
                Grant::new("prod", Role::Viewer),
            ],
        }
    }

    #[test]
    fn a_project_role_applies_only_in_its_project() {
        let a = alice();
        assert!(a
            .check(Permission::VmLifecycle, Scope::Project("dev"))
            .is_ok());
        let denied = a
            .check(Permission::VmLifecycle, Scope::Project("prod"))
            .unwrap_err();
        let text = denied.to_string();
        assert!(
            text.contains("vm.lifecycle") && text.contains("prod") && text.contains("viewer"),
            "{text}"
        );
        assert!(a
            .check(Permission::VmRead, Scope::Project("other"))
            .is_err());
        assert!(a.check(Permission::HostStats, Scope::Host).is_err());
        assert!(a.check(Permission::VmLifecycle, Scope::AnyProject).is_ok());
    }

    #[test]
    fn root_may_do_everything_everywhere() {
        let root = Identity::root();
        for p in Permission::ALL {
            assert!(root.check(p, Scope::Host).is_ok());
            assert!(root.check(p, Scope::Project("x")).is_ok());
        }
        assert_eq!(root.readable_projects(Permission::VmRead), None);
    }

    #[test]
    fn a_token_scope_never_widens_the_users_grants() {
        let a = alice();
        let t = a.restrict(&[Grant::new("dev", Role::Admin), Grant::new("*", Role::Admin)]);
        assert_eq!(t.grants, vec![Grant::new("dev", Role::Operator)]);
        let t = a.restrict(&[Grant::new("dev", Role::Viewer)]);
        assert!(t
            .check(Permission::VmLifecycle, Scope::Project("dev"))
            .is_err());
    }

    #[test]
    fn readable_projects_lists_the_granted_ones() {
        assert_eq!(
            alice().readable_projects(Permission::VmRead),
            Some(vec!["dev".to_string(), "prod".to_string()])
        );
    }

    #[test]
    fn grants_parse_from_project_equals_role() {
        assert_eq!(
            Grant::parse("dev=operator"),
            Ok(Grant::new("dev", Role::Operator))
        );
        assert_eq!(Grant::parse("admin"), Ok(Grant::new("*", Role::Admin)));
        assert!(Grant::parse("Dev=admin").is_err());
        assert!(Grant::parse("dev=boss").is_err());
    }
}
