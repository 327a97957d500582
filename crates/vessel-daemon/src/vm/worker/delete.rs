//! Deleting a VM: its QEMU, its records, its NICs' addresses and the volumes made for it.

use vessel_api::OperationAction;
use vessel_store::{Op, Txn};

use super::{store_failed, OpResult, Worker};
use crate::common::op_error::OpError;
use crate::vm::disks;
use crate::vm::model::{snapshot_head_key, snapshots_prefix, vm_prefix, Loaded};
use crate::vm::snapshot_quota;

impl Worker {
    pub(super) async fn delete(&mut self, force: bool) -> OpResult {
        let Some(Loaded { status, record, .. }) = self.load().await? else {
            return Ok(());
        };
        vessel_core::check_action(OperationAction::Delete, status.state, force)
            .map_err(OpError::conflict)?;
        if self.live.is_some() {
            self.kill_and_reap().await?;
        }
        let mut txn = Txn::new()
            .then(Op::DeletePrefix(vm_prefix(&self.name)))
            .then(Op::DeletePrefix(snapshots_prefix(&self.name)))
            .then(Op::DeletePrefix(snapshot_quota::vm_prefix(&self.name)))
            .then(Op::Delete(snapshot_head_key(&self.name)));
        for nic in &record.spec.nics {
            txn = crate::network::service::release(txn, nic);
        }
        self.ctx.store.txn(txn).await.map_err(store_failed)?;
        if !record.spec.nics.is_empty() {
            self.ctx.net.sync(&self.ctx).await;
        }
        self.ctx.forget_console(&self.name);
        // Volumes made for the VM (its root disk from an image) go with it, after its records:
        // a leftover volume is visible and deletable, a VM pointing at a deleted volume is not.
        for disk in record.spec.disks.iter().filter(|d| d.delete_with_vm) {
            if let Err(e) = disks::delete_owned(&self.ctx, disk).await {
                tracing::warn!(vm = %self.name, volume = %disk.volume, error = %e, "could not delete the VM's volume");
            }
        }
        let dir = self.ctx.vm_dir(&self.name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = %self.name, error = %e, "could not remove {}", dir.display());
            }
        }
        self.ctx
            .event_in(&record.project, &self.name, "deleted")
            .await;
        Ok(())
    }
}
