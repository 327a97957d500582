//! Per-project quotas: limits, usage, and the check of a request against them. The daemon makes
//! the check atomic (see its `projects` module); here is only the arithmetic.

use serde::{Deserialize, Serialize};

/// A project's limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<u64>,
}

/// What a project uses, or what a request adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub vms: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub networks: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.vms += other.vms;
        self.vcpus += other.vcpus;
        self.memory_mib += other.memory_mib;
        self.disk_bytes += other.disk_bytes;
        self.networks += other.networks;
    }
}

/// A request that would take a project over one of its limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "project {project:?} is at its {limit} quota: limit {max}, in use {used}, this request needs {requested} more"
)]
pub struct QuotaExceeded {
    pub project: String,
    /// Which limit: `vms`, `vcpus`, `memory_mib`, `disk_bytes` or `networks`.
    pub limit: &'static str,
    pub max: u64,
    pub used: u64,
    pub requested: u64,
}

impl Quota {
    /// Whether `used` plus `request` stays within every limit; the first one exceeded otherwise.
    /// A request that adds nothing to a limit passes it even if the project is already over it
    /// (after a quota was lowered): stopping or shrinking must stay possible.
    pub fn check(&self, project: &str, used: &Usage, request: &Usage) -> Result<(), QuotaExceeded> {
        let limits = [
            ("vms", self.vms, used.vms, request.vms),
            ("vcpus", self.vcpus, used.vcpus, request.vcpus),
            (
                "memory_mib",
                self.memory_mib,
                used.memory_mib,
                request.memory_mib,
            ),
            (
                "disk_bytes",
                self.disk_bytes,
                used.disk_bytes,
                request.disk_bytes,
            ),
            ("networks", self.networks, used.networks, request.networks),
        ];
        for (limit, max, used, requested) in limits {
            let Some(max) = max else { continue };
            if requested > 0 && used.saturating_add(requested) > max {
                return Err(QuotaExceeded {
                    project: project.to_string(),
                    limit,
                    max,
                    used,
                    requested,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_names_the_limit_and_the_usage() {
        let quota = Quota {
            vcpus: Some(4),
            ..Default::default()
        };
        let used = Usage {
            vms: 2,
            vcpus: 3,
            ..Default::default()
        };
        let one = Usage {
            vms: 1,
            vcpus: 1,
            ..Default::default()
        };
        assert!(quota.check("dev", &used, &one).is_ok());
        let two = Usage { vcpus: 2, ..one };
        let err = quota.check("dev", &used, &two).unwrap_err();
        assert_eq!(
            (err.limit, err.max, err.used, err.requested),
            ("vcpus", 4, 3, 2)
        );
        assert!(
            err.to_string().contains("vcpus quota: limit 4, in use 3"),
            "{err}"
        );
    }

    #[test]
    fn requests_that_add_nothing_pass_a_project_already_over() {
        let quota = Quota {
            vms: Some(1),
            ..Default::default()
        };
        let used = Usage {
            vms: 3,
            ..Default::default()
        };
        assert!(quota.check("p", &used, &Usage::default()).is_ok());
    }
}
