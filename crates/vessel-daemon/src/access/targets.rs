//! What the security middleware needs to know about the object a route names, asked of the
//! feature that owns it: one table keyed by [`Target`]. The middleware reads no feature's store
//! keys; each feature answers for its own objects (`project_of`), and says how it answers a
//! request for one that does not exist (`not_found`).

use vessel_api::ApiError;
use vessel_auth::routes::{Matched, Target};

use crate::ctx::Service;

/// The project of the object a route names, and whether it is public (only images can be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub project: String,
    pub public: bool,
}

impl Owner {
    fn of(project: Option<String>) -> Option<Owner> {
        project.map(|project| Owner {
            project,
            public: false,
        })
    }
}

/// The owner of the object `matched` names; `None` when it does not exist (any project will do:
/// the handler answers 404) or when the route names no object of a project.
pub async fn owner(s: &Service, matched: &Matched) -> Result<Option<Owner>, ApiError> {
    let param = |name: &str| matched.param(name).unwrap_or_default();
    Ok(match matched.route.target {
        Target::Vm => Owner::of(s.ctx.view.project_of(param("name")).await.ok().flatten()),
        Target::Image => crate::storage::images::project_of(s, param("name"))
            .await
            .map(|(project, public)| Owner { project, public }),
        // A volume without a project of its own is `default`'s.
        Target::Volume => Owner::of(Some(
            crate::storage::ownership::get(&s.ctx, param("pool"), param("name")).await?,
        )),
        Target::Network => {
            Owner::of(crate::network::service::project_of(&s.ctx, param("name")).await)
        }
        Target::Operation => Owner::of(crate::api::operations::project_of(s, param("id")).await),
        Target::Host | Target::Any | Target::Project | Target::Body => None,
    })
}

/// The answer to a request for the object `matched` names when it does not exist, exactly as
/// its handler gives it (a hidden object must look missing).
pub fn not_found(matched: &Matched) -> Option<ApiError> {
    let param = |name: &str| matched.param(name).unwrap_or_default();
    Some(match matched.route.target {
        Target::Vm => crate::vm::service::not_found(param("name")),
        Target::Image => crate::storage::images::not_found(param("name")),
        Target::Network => crate::network::service::not_found(param("name")),
        Target::Volume => crate::storage::volumes::not_found(param("pool"), param("name")),
        Target::Operation => crate::vm::service::operation_not_found(param("id")),
        Target::Host | Target::Any | Target::Project | Target::Body => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_auth::{lookup, Grant, Identity, Permission, Role, Visibility};

    fn owner_of(project: &str) -> Option<Owner> {
        Some(Owner {
            project: project.into(),
            public: false,
        })
    }

    /// Records of two projects, written as the features write them.
    async fn two_projects(s: &Service) {
        for (name, project) in [("n1", "p1"), ("n2", "p2")] {
            let network = serde_json::json!({"name": name, "project": project, "kind": "user",
                "dhcp": false, "mtu": 1500, "ingress_policy": "allow", "created_at_ms": 1});
            s.ctx
                .store
                .put(
                    &crate::network::service::network_key(name),
                    network.to_string().into_bytes(),
                )
                .await
                .unwrap();
        }
        for (id, project) in [("0a", "p1"), ("0b", "p2")] {
            let op = serde_json::json!({"id": id, "vm": "", "project": project, "action": "import_image",
                "status": "succeeded", "created_at_ms": 1});
            s.ctx
                .store
                .put(&crate::vm::model::op_key(id), op.to_string().into_bytes())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn each_feature_answers_for_the_project_of_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let s = Service {
            ctx: crate::access::route_table::test_ctx(dir.path()).await,
        };
        two_projects(&s).await;
        let owner_at = |method: &str, path: &str| {
            let matched = lookup(method, path).unwrap();
            let s = s.clone();
            async move { owner(&s, &matched).await.unwrap() }
        };
        assert_eq!(owner_at("GET", "/v1/networks/n2").await, owner_of("p2"));
        assert_eq!(owner_at("GET", "/v1/operations/0a").await, owner_of("p1"));
        // A volume without an entry is `default`'s.
        assert_eq!(
            owner_at("GET", "/v1/pools/default/volumes/v1").await,
            owner_of("default")
        );
        // Missing objects have no owner (the handler answers 404).
        assert_eq!(owner_at("GET", "/v1/vms/nosuch").await, None);
        assert_eq!(owner_at("GET", "/v1/images/nosuch").await, None);
        assert_eq!(owner_at("GET", "/v1/networks/nosuch").await, None);
        assert_eq!(owner_at("GET", "/v1/operations/0c").await, None);
        // Routes that name no object of a project.
        assert_eq!(owner_at("GET", "/v1/projects/p1").await, None);
        assert_eq!(owner_at("POST", "/v1/vms").await, None);
    }

    #[tokio::test]
    async fn lists_show_the_objects_of_the_projects_the_caller_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Service {
            ctx: crate::access::route_table::test_ctx(dir.path()).await,
        };
        two_projects(&s).await;
        let alice = Identity {
            name: "alice".into(),
            grants: vec![Grant::new("p1", Role::Viewer)],
        };
        let networks = |v: Visibility| {
            let s = s.clone();
            async move {
                let listed = s.list_networks(&v).await.unwrap();
                listed.into_iter().map(|n| n.name).collect::<Vec<_>>()
            }
        };
        assert_eq!(
            networks(Visibility::of(&alice, Permission::NetworkRead)).await,
            ["n1"]
        );
        assert_eq!(networks(Visibility::everything()).await, ["n1", "n2"]);
        let ops = s
            .list_operations(&Visibility::of(&alice, Permission::OperationRead))
            .await
            .unwrap();
        assert_eq!(
            ops.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["0a"]
        );
        let vms = s
            .list_vms_json(&Visibility::of(&alice, Permission::VmRead))
            .await
            .unwrap();
        assert_eq!(&vms[..], b"[]");
    }

    #[test]
    fn a_hidden_object_is_answered_as_its_handler_answers_a_missing_one() {
        let e = not_found(&lookup("GET", "/v1/networks/n2").unwrap()).unwrap();
        assert_eq!(e, crate::network::service::not_found("n2"));
        assert!(not_found(&lookup("GET", "/v1/projects/p1").unwrap()).is_none());
    }
}
