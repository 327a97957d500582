//! The worker's side of a create from an image: making the root disk, or undoing the create.

use vessel_api::VmDisk;
use vessel_store::{Op, Txn};

use super::{OpResult, Worker};
use crate::common::op_error::OpError;
use crate::vm::model::{vm_prefix, Provision, VmRecord};
use crate::vm::provision;

impl Worker {
    /// Makes a new VM's root disk from its image. On failure the whole create is undone: the
    /// VM's records, its cloud-init data and anything made for the disk go, as if the request
    /// had never been made.
    pub(super) async fn provision(&mut self, op_id: &str, plan: &Provision) -> OpResult {
        let vm = self.load_existing().await?.record;
        let root = vm
            .spec
            .disks
            .first()
            .ok_or_else(|| OpError::failed("the VM has no root disk to make from its image"))?
            .clone();
        let made = provision::make_root_disk(&self.ctx, op_id, plan, &root).await;
        let virtual_bytes = match made {
            Ok(bytes) => bytes,
            Err(problem) => {
                self.undo_create(&vm, &root).await;
                return Err(problem);
            }
        };
        // The reservation made with the VM becomes the size the disk was made with.
        crate::storage::ownership::record_size(&self.ctx, &root.pool, &root.volume, virtual_bytes)
            .await?;
        Ok(())
    }

    /// Undoes a create whose root disk could not be made: the VM's records, its cloud-init
    /// data, its disk's quota reservation and its NICs' addresses go.
    pub(super) async fn undo_create(&mut self, vm: &VmRecord, root: &VmDisk) {
        let mut txn = Txn::new()
            .then(Op::DeletePrefix(vm_prefix(&self.name)))
            .then(Op::Delete(crate::storage::ownership::key(
                &self.ctx.config.host_name,
                &root.pool,
                &root.volume,
            )));
        for nic in &vm.spec.nics {
            txn = crate::network::service::release(txn, nic);
        }
        if let Err(e) = self.ctx.store.txn(txn).await {
            tracing::error!(vm = %self.name, error = %e, "could not undo a failed create");
        }
        self.ctx.forget_console(&self.name);
    }
}
