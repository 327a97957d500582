//! Spec changes: an edit (within the project's quota, checked again atomically with the write)
//! and the online growth of a disk.

use vessel_api::{EditVmRequest, OperationAction, VmDisk};
use vessel_store::Txn;

use super::lifecycle::check_files;
use super::{check_action, store_failed, OpResult, Worker};
use crate::common::errors::error_chain;
use crate::common::op_error::OpError;
use crate::vm::model::{Loaded, VmRecord};

impl Worker {
    /// Applies an edit to the spec as it is now (the request checked it against the spec as it
    /// was; another operation may have changed the VM since).
    pub(super) async fn apply_edit(&mut self, edit: &EditVmRequest) -> OpResult {
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        check_action(OperationAction::Edit, status.state)?;
        let before = vm.clone();
        vm.spec =
            vessel_core::apply_edit(&vm.spec, edit, self.ctx.host).map_err(OpError::invalid)?;
        check_files(&vm).map_err(OpError::invalid)?;
        self.put_spec_within_quota(&before, &vm, Txn::new()).await?;
        self.ctx.event(&self.name, "spec edited").await;
        Ok(())
    }

    /// Writes an edited (or reverted) spec, with `also` in the same transaction. When it grows
    /// the VM, the project's quota is checked again here, in the same transaction as the write
    /// (the request's check ran earlier, and another edit or create may have used the room
    /// since): of two racing growths only one can fit.
    pub(super) async fn put_spec_within_quota(
        &self,
        before: &VmRecord,
        after: &VmRecord,
        also: Txn,
    ) -> OpResult {
        let store = self.ctx.store.as_ref();
        for _ in 0..crate::access::projects::MAX_ATTEMPTS {
            // A refusal keeps its code: the request is answered 409, not 500.
            let guard = crate::access::projects::reserve_growth(store, before, after).await?;
            let guarded = guard.is_some();
            let mut txn = self.with_spec(also.clone(), after);
            if let Some(guard) = guard {
                txn = guard.apply(txn);
            }
            if self
                .ctx
                .store
                .txn(txn)
                .await
                .map_err(store_failed)?
                .succeeded
            {
                return Ok(());
            }
            if !guarded {
                return Err(OpError::not_found(format!(
                    "VM {} was deleted during the edit",
                    self.name
                )));
            }
        }
        Err(crate::access::projects::contended(&before.project).into())
    }

    /// Grows a disk of the running VM through QEMU.
    pub(super) async fn resize_disk(&mut self, disk: &VmDisk, size: u64) -> OpResult {
        let live = self.live.as_ref().ok_or_else(|| {
            OpError::conflict("the VM stopped meanwhile; resize the volume again (offline)")
        })?;
        let Loaded { record: vm, .. } = self.load_existing().await?;
        let node = if vm
            .spec
            .disks
            .iter()
            .any(|d| d.pool == disk.pool && d.volume == disk.volume)
        {
            vessel_core::disk_node_name(&disk.pool, &disk.volume)
        } else {
            vessel_qemu::snapshot::BOOT_DISK_NODE.to_string()
        };
        live.instance.resize_disk(&node, size).await.map_err(|e| {
            OpError::failed(format!(
                "QEMU could not resize the disk: {}",
                error_chain(&e)
            ))
        })?;
        self.ctx
            .event(
                &self.name,
                format!("disk {}/{} grown to {size} bytes", disk.pool, disk.volume),
            )
            .await;
        Ok(())
    }
}
