//! What the sampler asks a running QEMU: its disks' I/O counters and its vCPU threads. A probe
//! shares the instance's QMP connection (replies are matched by id), so sampling never waits for
//! the VM's worker, which may be in the middle of a long operation.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use vessel_metrics::DiskStats;
use vessel_qmp::Qmp;

use crate::BackendError;

/// A QMP query that takes longer than this is skipped for this round: a sample must never stall.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait]
pub trait StatsProbe: Send + Sync {
    /// I/O counters of every disk with a device (`query-blockstats`).
    async fn block_stats(&self) -> Result<Vec<DiskStats>, BackendError>;
    /// Host thread ids of the vCPUs (`query-cpus-fast`).
    async fn vcpu_threads(&self) -> Result<Vec<u32>, BackendError>;
}

pub(crate) struct QmpProbe(pub(crate) Qmp);

#[async_trait]
impl StatsProbe for QmpProbe {
    async fn block_stats(&self) -> Result<Vec<DiskStats>, BackendError> {
        let reply = self
            .0
            .execute_with_timeout("query-blockstats", None, QUERY_TIMEOUT)
            .await?;
        Ok(parse_blockstats(&reply))
    }

    async fn vcpu_threads(&self) -> Result<Vec<u32>, BackendError> {
        let reply = self
            .0
            .execute_with_timeout("query-cpus-fast", None, QUERY_TIMEOUT)
            .await?;
        Ok(reply
            .as_array()
            .map(|cpus| {
                cpus.iter()
                    .filter_map(|c| c.get("thread-id").and_then(Value::as_u64))
                    .map(|t| t as u32)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Disks as the guest has them: entries attached to a device, named after their block node
/// (`disk0`, the data disks' `vd…` names, `cidata`), which the daemon maps to volumes. Entries
/// without a device (backing files) are skipped.
pub fn parse_blockstats(reply: &Value) -> Vec<DiskStats> {
    let Some(entries) = reply.as_array() else {
        return Vec::new();
    };
    let mut disks: Vec<DiskStats> = entries
        .iter()
        .filter_map(|entry| {
            let attached = ["qdev", "device"].iter().any(|k| {
                entry
                    .get(*k)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            });
            if !attached {
                return None;
            }
            let device = entry
                .get("node-name")
                .and_then(Value::as_str)
                .or_else(|| entry.get("device").and_then(Value::as_str))
                .filter(|s| !s.is_empty())?
                .to_string();
            let stats = entry.get("stats")?;
            let n = |key: &str| stats.get(key).and_then(Value::as_u64).unwrap_or(0);
            Some(DiskStats {
                device,
                read_bytes: n("rd_bytes"),
                write_bytes: n("wr_bytes"),
                read_ops: n("rd_operations"),
                write_ops: n("wr_operations"),
                flush_ops: n("flush_operations"),
                read_time_ns: n("rd_total_time_ns"),
                write_time_ns: n("wr_total_time_ns"),
                flush_time_ns: n("flush_total_time_ns"),
            })
        })
        .collect();
    disks.sort_by(|a, b| a.device.cmp(&b.device));
    disks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blockstats_are_named_after_the_guest_device() {
        let reply = json!([
            {"device": "", "node-name": "disk0",
             "qdev": "/machine/peripheral-anon/device[1]/virtio-backend",
             "stats": {"rd_bytes": 512, "wr_bytes": 1024, "rd_operations": 1, "wr_operations": 2,
                       "flush_operations": 3, "rd_total_time_ns": 10, "wr_total_time_ns": 20,
                       "flush_total_time_ns": 30}},
            {"device": "", "node-name": "vd0001", "qdev": "/machine/peripheral/vd0001-dev",
             "stats": {"wr_bytes": 7}},
            {"device": "", "node-name": "backing", "stats": {}}
        ]);
        let disks = parse_blockstats(&reply);
        assert_eq!(disks.len(), 2, "the node without a device is skipped");
        assert_eq!(disks[0].device, "disk0");
        assert_eq!((disks[0].read_bytes, disks[0].flush_time_ns), (512, 30));
        assert_eq!(
            (disks[1].device.as_str(), disks[1].write_bytes),
            ("vd0001", 7)
        );
    }
}
