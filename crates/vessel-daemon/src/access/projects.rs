//! Projects and their quotas. Every VM, volume, image and network belongs to a project
//! (`default` unless the create names another). Quotas are enforced atomically: a create (or
//! an edit that grows a VM) computes the project's usage, checks it, and commits only if the
//! project's record has not changed since (compare-and-swap on its mod revision), re-putting
//! the record so that every concurrent create in the project conflicts with it. Two requests
//! racing for the last unit: one commits, the other retries, sees the new usage and is refused.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use vessel_api::{ApiError, CreateProjectRequest, ErrorCode, Project, Quota, Usage};
use vessel_auth::{Visibility, DEFAULT_PROJECT};
use vessel_store::{Compare, Op, Store, Txn};

use crate::common::errors::{internal, store_error};
use crate::common::quota::{Counter, Holdings};
use crate::ctx::Ctx;
pub use crate::vm::model::vm_usage;
use crate::vm::model::{decode, encode, now_ms, VmRecord};

pub const PROJECTS_PREFIX: &str = "projects/";

pub fn project_key(name: &str) -> String {
    format!("{PROJECTS_PREFIX}{name}")
}

/// A project as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRecord {
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    pub created_ms: u64,
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("project {name:?} does not exist")).with_hint(
        "list projects with `vessel project list`, create one with `vessel project create`",
    )
}

/// Makes the `default` project at first start (without limits).
pub async fn ensure_default(ctx: &Ctx) -> anyhow::Result<()> {
    let record = ProjectRecord {
        name: DEFAULT_PROJECT.into(),
        quota: Quota::default(),
        created_ms: now_ms(),
    };
    let txn = Txn::new()
        .when(Compare::Missing(project_key(DEFAULT_PROJECT)))
        .then(Op::Put(project_key(DEFAULT_PROJECT), encode(&record)));
    ctx.store.txn(txn).await?;
    Ok(())
}

/// A project's record and its mod revision (the compare-and-swap point).
pub async fn load(store: &dyn Store, name: &str) -> Result<(ProjectRecord, i64), ApiError> {
    vessel_auth::validate_project_name(name).map_err(ApiError::invalid)?;
    let kv = store
        .get(&project_key(name))
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(name))?;
    let record = decode(&kv.key, &kv.value).map_err(internal)?;
    Ok((record, kv.mod_revision))
}

/// What a project uses now, from the store (not the view: a create that just committed must be
/// counted by the next one).
pub async fn usage(store: &dyn Store, name: &str) -> Result<Usage, ApiError> {
    Ok(usage_and_volumes(store, name).await?.0)
}

/// The counters of every feature, registered once at start (`lib.rs`). Features call the quota
/// check here when they create or grow something, so the check cannot call them back by name
/// without every feature depending on every other; they register how they count instead.
static COUNTERS: OnceLock<Vec<Counter>> = OnceLock::new();

/// Registers the features' counters (the first registration wins: one per process).
pub fn count_with(counters: Vec<Counter>) {
    let _ = COUNTERS.set(counters);
}

/// [`usage`], and how many volumes (and images) the project has.
async fn usage_and_volumes(store: &dyn Store, name: &str) -> Result<(Usage, u64), ApiError> {
    let counters = COUNTERS
        .get()
        .ok_or_else(|| ApiError::internal("no quota counters registered"))?;
    let mut total = Holdings::default();
    for count in counters {
        let held = count(store, name).await?;
        total.usage.add(&held.usage);
        total.volumes += held.volumes;
    }
    Ok((total.usage, total.volumes))
}

/// The conditions under which a quota check stays true: the project's record is unchanged.
/// Added to the transaction that creates or grows the VM.
#[derive(Debug)]
pub struct QuotaGuard {
    key: String,
    revision: i64,
    record: ProjectRecord,
}

impl QuotaGuard {
    pub fn apply(self, txn: Txn) -> Txn {
        txn.when(Compare::ModRevision(self.key.clone(), self.revision))
            .then(Op::Put(self.key, encode(&self.record)))
    }
}

/// Checks that `request` fits in `project`'s quota now; the guard makes the commit conditional
/// on nothing having changed in the project meanwhile.
pub async fn reserve(
    store: &dyn Store,
    project: &str,
    request: &Usage,
) -> Result<QuotaGuard, ApiError> {
    let (record, revision) = load(store, project).await?;
    let used = usage(store, project).await?;
    record.quota.check(project, &used, request).map_err(|e| {
        ApiError::new(ErrorCode::QuotaExceeded, quota_message(&e)).with_hint(
            "delete or shrink something in the project, or ask an admin to raise the quota (`vessel project quota`)",
        )
    })?;
    Ok(QuotaGuard {
        key: project_key(project),
        revision,
        record,
    })
}

/// The refusal in words; disk figures in binary units as well as bytes, since nobody reads
/// 10737418240 at a glance.
fn quota_message(e: &vessel_auth::QuotaExceeded) -> String {
    if e.limit != "disk_bytes" {
        return e.to_string();
    }
    let size = |bytes: u64| {
        format!(
            "{} ({bytes} bytes)",
            vessel_core::units::format_size_bytes(bytes)
        )
    };
    format!(
        "project {:?} is at its disk quota: limit {}, in use {}, this request needs {} more",
        e.project,
        size(e.max),
        size(e.used),
        size(e.requested)
    )
}

/// For an edit that grows a VM: the quota check of the growth (nothing when it does not grow).
/// The edit is applied by the VM's worker later; the guard covers the request's commit.
pub async fn reserve_growth(
    store: &dyn Store,
    before: &VmRecord,
    after: &VmRecord,
) -> Result<Option<QuotaGuard>, ApiError> {
    let (old, new) = (vm_usage(before), vm_usage(after));
    let growth = Usage {
        vcpus: new.vcpus.saturating_sub(old.vcpus),
        memory_mib: new.memory_mib.saturating_sub(old.memory_mib),
        ..Usage::default()
    };
    if growth == Usage::default() {
        return Ok(None);
    }
    reserve(store, &before.project, &growth).await.map(Some)
}

/// How often a create retries after another request changed the project under it.
pub const MAX_ATTEMPTS: u32 = 64;

pub fn contended(project: &str) -> ApiError {
    ApiError::conflict(format!(
        "project {project:?} changed too often while this request was checked against its quota"
    ))
    .with_hint("try again")
}

// ---- what the routes do (`routes.rs` holds the handlers) ----

async fn view(store: &dyn Store, record: ProjectRecord) -> Result<Project, ApiError> {
    Ok(Project {
        usage: usage(store, &record.name).await?,
        name: record.name,
        quota: record.quota,
        created_at_ms: record.created_ms,
    })
}

/// The projects `visible` shows.
pub async fn list(store: &dyn Store, visible: &Visibility) -> Result<Vec<Project>, ApiError> {
    let (kvs, _) = store.list(PROJECTS_PREFIX).await.map_err(store_error)?;
    let mut out = Vec::new();
    for kv in kvs {
        let record: ProjectRecord = decode(&kv.key, &kv.value).map_err(internal)?;
        if visible.shows(&record.name) {
            out.push(view(store, record).await?);
        }
    }
    Ok(out)
}

/// Records a new project; a taken name changes nothing.
pub async fn create(store: &dyn Store, req: CreateProjectRequest) -> Result<Project, ApiError> {
    vessel_auth::validate_project_name(&req.name).map_err(ApiError::invalid)?;
    let record = ProjectRecord {
        name: req.name.clone(),
        quota: req.quota,
        created_ms: now_ms(),
    };
    let txn = Txn::new()
        .when(Compare::Missing(project_key(&req.name)))
        .then(Op::Put(project_key(&req.name), encode(&record)));
    let done = store.txn(txn).await.map_err(store_error)?;
    if !done.succeeded {
        return Err(ApiError::new(
            ErrorCode::AlreadyExists,
            format!("project {:?} already exists", req.name),
        ));
    }
    view(store, record).await
}

pub async fn get(store: &dyn Store, name: &str) -> Result<Project, ApiError> {
    let (record, _) = load(store, name).await?;
    view(store, record).await
}

pub async fn set_quota(store: &dyn Store, name: &str, quota: Quota) -> Result<Project, ApiError> {
    let (mut record, revision) = load(store, name).await?;
    record.quota = quota;
    let txn = Txn::new()
        .when(Compare::ModRevision(project_key(name), revision))
        .then(Op::Put(project_key(name), encode(&record)));
    if !store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(contended(name));
    }
    view(store, record).await
}

/// Deletes an empty project (never `default`).
pub async fn delete(store: &dyn Store, name: &str) -> Result<(), ApiError> {
    if name == DEFAULT_PROJECT {
        return Err(ApiError::conflict("the default project cannot be deleted"));
    }
    let (_, revision) = load(store, name).await?;
    let (used, volumes) = usage_and_volumes(store, name).await?;
    if used.vms > 0 || used.networks > 0 || volumes > 0 {
        return Err(
            ApiError::conflict(format!(
                "project {name:?} still has {} VM(s), {} network(s) and {volumes} volume(s) or image(s)",
                used.vms, used.networks
            ))
            .with_hint("delete them first (`vessel vm list`, `vessel network list`, `vessel volume list`, `vessel image list` show them)"),
        );
    }
    // Conditional on the revision read before counting: a create that committed meanwhile
    // re-put the record, and this delete then fails instead of orphaning the new VM.
    let txn = Txn::new()
        .when(Compare::ModRevision(project_key(name), revision))
        .then(Op::Delete(project_key(name)));
    if !store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(contended(name));
    }
    Ok(())
}
