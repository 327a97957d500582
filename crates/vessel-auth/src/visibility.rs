//! Which objects of one kind a caller may see: the rule every list of the API applies (VMs,
//! images, volumes, networks, operations, projects), in one place.

use crate::{Identity, Permission, Target};

/// The projects whose objects a caller may see with one read permission. Root and callers
/// holding the permission on `*` see every project; everyone else sees the projects they hold
/// it in. Objects without a project of their own are in [`crate::DEFAULT_PROJECT`]; the feature
/// that lists them says so when it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// `None`: every project.
    projects: Option<Vec<String>>,
}

impl Visibility {
    /// What `identity` may see with `read` (`vm.read` for VMs, `image.read` for images...).
    pub fn of(identity: &Identity, read: Permission) -> Visibility {
        Visibility {
            projects: identity.readable_projects(read),
        }
    }

    /// Every project (the daemon's own use, root).
    pub fn everything() -> Visibility {
        Visibility { projects: None }
    }

    /// Whether an object of `project` is shown.
    pub fn shows(&self, project: &str) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|projects| projects.iter().any(|p| p == project))
    }

    /// Whether every project is shown (root, a grant on `*`): only such callers see what has
    /// no project recorded (events from before events had one).
    pub fn shows_all(&self) -> bool {
        self.projects.is_none()
    }

    /// Whether an image is shown: a public image is shown to everyone who may read images.
    pub fn shows_image(&self, project: &str, public: bool) -> bool {
        public || self.shows(project)
    }
}

impl Target {
    /// The permission that lets a caller know that an object of this kind exists (list it, or
    /// be told it is there); `None` for targets that name no stored object of a project (the
    /// host, a project, the body of a create).
    pub fn read_permission(self) -> Option<Permission> {
        match self {
            Target::Vm => Some(Permission::VmRead),
            Target::Image => Some(Permission::ImageRead),
            Target::Volume => Some(Permission::StorageRead),
            Target::Network => Some(Permission::NetworkRead),
            Target::Operation => Some(Permission::OperationRead),
            Target::Host | Target::Any | Target::Project | Target::Body => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Grant, Role};

    fn user(grants: Vec<Grant>) -> Identity {
        Identity {
            name: "alice".into(),
            grants,
        }
    }

    #[test]
    fn a_project_grant_shows_that_project_only() {
        let v = Visibility::of(
            &user(vec![Grant::new("dev", Role::Viewer)]),
            Permission::VmRead,
        );
        assert!(v.shows("dev"));
        assert!(!v.shows("prod"));
        assert!(!v.shows("default"), "default is a project like any other");
        assert!(!v.shows_all());
    }

    #[test]
    fn root_and_star_grants_show_everything() {
        for identity in [Identity::root(), user(vec![Grant::new("*", Role::Viewer)])] {
            let v = Visibility::of(&identity, Permission::NetworkRead);
            assert_eq!(v, Visibility::everything());
            assert!(v.shows("any") && v.shows("default") && v.shows_all());
        }
    }

    #[test]
    fn no_grant_shows_nothing_but_public_images() {
        let v = Visibility::of(&user(vec![]), Permission::ImageRead);
        assert!(!v.shows("default"));
        assert!(!v.shows_image("dev", false));
        assert!(
            v.shows_image("dev", true),
            "public images are listed for everyone"
        );
    }

    #[test]
    fn a_grant_whose_role_lacks_the_permission_shows_nothing() {
        let v = Visibility::of(
            &user(vec![Grant::new("dev", Role::Viewer)]),
            Permission::VmLifecycle,
        );
        assert!(!v.shows("dev"));
    }

    #[test]
    fn object_targets_have_a_read_permission_and_the_others_none() {
        assert_eq!(Target::Vm.read_permission(), Some(Permission::VmRead));
        assert_eq!(
            Target::Volume.read_permission(),
            Some(Permission::StorageRead)
        );
        assert_eq!(Target::Body.read_permission(), None);
        assert_eq!(Target::Project.read_permission(), None);
    }
}
