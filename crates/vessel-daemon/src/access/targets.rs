//! What the security middleware needs to know about the object a route names, asked of the
//! feature that owns it: one table keyed by [`Target`]. The middleware reads no feature's store
//! keys; each feature answers for its own objects (`project_of`), and says how it answers a
//! request for one that does not exist (`not_found`).

use vessel_api::ApiError;
use vessel_auth::routes::{Matched, Target};

use crate::vm::service::Service;

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
            crate::storage::ownership::get(s.ctx.store.as_ref(), param("pool"), param("name"))
                .await?,
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
