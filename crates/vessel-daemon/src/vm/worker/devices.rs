//! Disks and NICs of a VM: attach, detach, add, remove; hot-plug and hot-unplug of a running
//! VM's devices, and making a re-adopted QEMU's disks what the spec says.

use std::time::Duration;

use vessel_api::{OperationAction, VmDisk, VmNic, VmSpec};
use vessel_qemu::{Instance, InstanceEvent};
use vessel_store::Txn;

use super::lifecycle::not_running;
use super::{check_action, store_failed, OpResult, Worker};
use crate::common::errors::error_chain;
use crate::common::op_error::OpError;
use crate::vm::disks;
use crate::vm::model::Loaded;

/// How long a guest may take to let go of a hot-unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

impl Worker {
    /// Attaches a disk: hot-plugged into a running VM, then recorded in the spec. `resumed`:
    /// the operation is re-run after a daemon restart, and part of it may be done.
    pub(super) async fn attach_disk(&mut self, disk: &VmDisk, resumed: bool) -> OpResult {
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        check_action(OperationAction::AttachDisk, status.state)?;
        // Re-run after a daemon restart: the spec may list the disk already (the restart came
        // after the spec write); what remains is to make sure QEMU has it.
        let done =
            resumed && vessel_core::disks::find_disk(&vm.spec, &disk.pool, &disk.volume).is_some();
        if !done {
            vm.spec = vessel_core::attach_disk(&vm.spec, disk.clone()).map_err(OpError::invalid)?;
        }
        crate::storage::ownership::require_in_project(
            &self.ctx,
            &disk.pool,
            &disk.volume,
            &vm.project,
        )
        .await?;
        if let Some(live) = &self.live {
            let vms = self.ctx.view.all().await.map_err(store_failed)?;
            let users = disks::conflicting_users(&vms, &self.name, disk);
            if !users.is_empty() {
                return Err(OpError::conflict(format!(
                    "volume {:?} is in use by running VM {}",
                    disk.volume,
                    users.join(", ")
                )));
            }
            let file = disks::resolve_disk(&self.ctx, &vm.project, disk).await?;
            live.instance
                .attach_disk(&file)
                .await
                .map_err(|e| hotplug_failed("hot-plug", e))?;
        }
        self.put_spec(&vm).await?;
        self.ctx
            .event(
                &self.name,
                format!("disk {}/{} attached", disk.pool, disk.volume),
            )
            .await;
        Ok(())
    }

    /// Detaches a disk: hot-unplugged from a running VM, then removed from the spec.
    pub(super) async fn detach_disk(&mut self, disk: &VmDisk, resumed: bool) -> OpResult {
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        check_action(OperationAction::DetachDisk, status.state)?;
        // Re-run after a daemon restart: the spec may not list the disk any more (the restart
        // came after the spec write); what remains is to make sure QEMU has nothing of it.
        let done =
            resumed && vessel_core::disks::find_disk(&vm.spec, &disk.pool, &disk.volume).is_none();
        if !done {
            vm.spec = vessel_core::detach_disk(&vm.spec, &disk.pool, &disk.volume)
                .map_err(OpError::invalid)?;
        }
        if self.live.is_some() {
            self.unplug(&vessel_core::disk_node_name(&disk.pool, &disk.volume))
                .await?;
        }
        self.put_spec(&vm).await?;
        self.ctx
            .event(
                &self.name,
                format!("disk {}/{} detached", disk.pool, disk.volume),
            )
            .await;
        Ok(())
    }

    /// Adds a NIC whose address and MAC the request reserved; they are given back if it fails.
    pub(super) async fn add_nic(&mut self, nic: &VmNic) -> OpResult {
        let result = self.plug_nic(nic.clone()).await;
        if result.is_err() {
            // Give the address and MAC back: the request failed as a whole.
            let txn = crate::network::service::release(Txn::new(), nic);
            if let Err(e) = self.ctx.store.txn(txn).await {
                tracing::warn!(vm = %self.name, error = %e, "could not release a failed NIC's address");
            }
        }
        result
    }

    /// Records the NIC (so that its port rules exist before its tap does), then hot-plugs it
    /// into a running VM; a failed hot-plug takes the record back.
    async fn plug_nic(&mut self, mut nic: VmNic) -> OpResult {
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        check_action(OperationAction::AddNic, status.state)?;
        if vm.spec.nics.len() >= vessel_core::network::MAX_NICS {
            return Err(OpError::conflict(format!(
                "the VM has {} NICs, the most it can have",
                vessel_core::network::MAX_NICS
            )));
        }
        // Another add may have taken the planned id since.
        if vm.spec.nics.iter().any(|n| n.id == nic.id) {
            nic.id = vessel_core::network::next_nic_id(&vm.spec);
            nic.tap = vessel_core::network::tap_name(&self.name, &nic.id);
        }
        let before = vm.clone();
        vm.spec.nics.push(nic.clone());
        self.put_spec(&vm).await?;
        self.ctx.net.sync(&self.ctx).await;
        if let Some(live) = &self.live {
            let plugged = async {
                let plan = crate::network::host::plan_nic(&self.ctx, &self.name, &nic)
                    .await
                    .map_err(OpError::failed)?;
                live.instance
                    .attach_nic(vm.spec.machine, &plan)
                    .await
                    .map_err(|e| hotplug_failed("hot-plug", e))
            }
            .await;
            if let Err(problem) = plugged {
                self.put_spec(&before).await?;
                self.ctx.net.sync(&self.ctx).await;
                return Err(problem);
            }
        }
        self.ctx
            .event(
                &self.name,
                format!(
                    "NIC {} ({}) added on network {}{}",
                    nic.id,
                    nic.mac,
                    nic.network,
                    nic.ipv4
                        .as_deref()
                        .map(|ip| format!(" with address {ip}"))
                        .unwrap_or_default()
                ),
            )
            .await;
        Ok(())
    }

    /// Removes a NIC (hot-unplugged from a running VM) and gives its address and MAC back.
    pub(super) async fn remove_nic(&mut self, nic: &VmNic) -> OpResult {
        let Loaded {
            record: mut vm,
            status,
            ..
        } = self.load_existing().await?;
        check_action(OperationAction::RemoveNic, status.state)?;
        let (spec, removed) =
            vessel_core::network::remove_nic(&vm.spec, &nic.id).map_err(OpError::not_found)?;
        if self.live.is_some() {
            self.unplug_nic(&removed.id).await?;
        }
        vm.spec = spec;
        let txn = crate::network::service::release(self.with_spec(Txn::new(), &vm), &removed);
        self.ctx.store.txn(txn).await.map_err(store_failed)?;
        self.ctx.net.sync(&self.ctx).await;
        self.ctx
            .event(
                &self.name,
                format!("NIC {} ({}) removed", removed.id, removed.mac),
            )
            .await;
        Ok(())
    }

    /// Hot-unplugs a NIC: the device goes (the guest is told), then its backend, which closes
    /// the tap.
    async fn unplug_nic(&mut self, nic_id: &str) -> OpResult {
        self.running_instance("the VM is not running")?
            .unplug_nic(nic_id)
            .await
            .map_err(|e| hotplug_failed("hot-unplug", e))?;
        self.await_released(vessel_qemu::nic::device_id(nic_id), "NIC", "remove it")
            .await?;
        self.running_instance("the VM stopped during the unplug")?
            .remove_nic_backend(nic_id)
            .await
            .map_err(|e| hotplug_failed("closing the NIC's tap", e))
    }

    /// Hot-unplugs a disk: the device goes (the guest is told), then the block node, which
    /// closes the file.
    ///
    /// Idempotent: what QEMU no longer has (an unplug cut short by a daemon restart, or a
    /// hot-plug that never finished) is skipped, and what is left of the disk is removed.
    async fn unplug(&mut self, node_name: &str) -> OpResult {
        let Some(found) = self.disk_in_qemu(node_name).await? else {
            return Ok(());
        };
        if found.device {
            let asked = self
                .running_instance("the VM is not running")?
                .unplug_disk(node_name)
                .await;
            match asked {
                Ok(()) => {
                    self.await_released(
                        vessel_qemu::disk::device_id(node_name),
                        "disk",
                        "detach it",
                    )
                    .await?
                }
                // Gone in the meantime: nothing to wait for.
                Err(e) => {
                    if self
                        .disk_in_qemu(node_name)
                        .await?
                        .is_some_and(|d| d.device)
                    {
                        return Err(hotplug_failed("hot-unplug", e));
                    }
                }
            }
        }
        self.running_instance("the VM stopped during the unplug")?
            .remove_block_node(node_name)
            .await
            .map_err(|e| hotplug_failed("closing the disk", e))
    }

    /// What the running QEMU holds of the disk whose node is `node_name`, if anything.
    async fn disk_in_qemu(
        &self,
        node_name: &str,
    ) -> Result<Option<vessel_qemu::PluggedDisk>, OpError> {
        let disks = self
            .running_instance("the VM is not running")?
            .plugged_disks()
            .await
            .map_err(|e| hotplug_failed("listing the VM's disks", e))?;
        Ok(disks.into_iter().find(|d| d.node_name == node_name))
    }

    /// Makes a re-adopted QEMU's disks what the spec says: what QEMU holds of a disk the spec
    /// does not list (a hot-plug cut short before the spec write, a detach cut short after it)
    /// is removed, which closes the volume's file and releases its lock; a disk the spec lists
    /// that QEMU lacks (or has only part of) is plugged in. An attach or detach that was cut
    /// short is re-run after this and finds its work done or redoes it.
    pub(super) async fn converge_disks(&mut self, spec: &VmSpec, project: &str) {
        let found = match self.running_instance("the VM is not running") {
            Ok(instance) => match instance.plugged_disks().await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(vm = %self.name, error = %error_chain(&e), "cannot list the disks of a re-adopted QEMU");
                    return;
                }
            },
            Err(_) => return,
        };
        let wanted: Vec<(String, &VmDisk)> = spec
            .disks
            .iter()
            .map(|d| (vessel_core::disk_node_name(&d.pool, &d.volume), d))
            .collect();
        for extra in found
            .iter()
            .filter(|f| !wanted.iter().any(|(node, _)| *node == f.node_name))
        {
            let message = match self.unplug(&extra.node_name).await {
                Ok(()) => format!(
                    "disk node {} removed from QEMU: the spec does not list it (a disk attach or detach cut short by a daemon restart)",
                    extra.node_name
                ),
                Err(e) => format!(
                    "could not remove disk node {} that the spec does not list: {e}",
                    extra.node_name
                ),
            };
            self.ctx.event(&self.name, message).await;
        }
        for (node, disk) in wanted {
            if found.iter().any(|f| f.node_name == node && f.complete()) {
                continue;
            }
            let plugged = async {
                let file = disks::resolve_disk(&self.ctx, project, disk).await?;
                self.running_instance("the VM is not running")?
                    .attach_disk(&file)
                    .await
                    .map_err(|e| hotplug_failed("hot-plug", e))
            }
            .await;
            let message = match plugged {
                Ok(()) => format!(
                    "disk {}/{} plugged into QEMU again: the spec lists it (a disk detach or attach cut short by a daemon restart)",
                    disk.pool, disk.volume
                ),
                Err(e) => format!(
                    "disk {}/{} is in the spec but not in QEMU, and could not be plugged in: {e}",
                    disk.pool, disk.volume
                ),
            };
            self.ctx.event(&self.name, message).await;
        }
    }

    /// The QEMU of the running VM, or `why` it is not there.
    fn running_instance(&self, why: &str) -> Result<&dyn Instance, OpError> {
        let live = self.live.as_ref().ok_or_else(|| OpError::conflict(why))?;
        Ok(live.instance.as_ref())
    }

    /// Waits until the guest has released a device being hot-unplugged (`DEVICE_DELETED`).
    async fn await_released(&mut self, device: String, what: &str, instead: &str) -> OpResult {
        let gone = self
            .wait_for_event(
                UNPLUG_TIMEOUT,
                |event| matches!(event, InstanceEvent::DeviceDeleted { device: d } if *d == device),
            )
            .await?;
        if !gone {
            return Err(OpError::timeout(format!(
                "the guest did not release the {what} within {} s; try again, or stop the VM and {instead} then",
                UNPLUG_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }

    /// Waits for an instance event that matches, handling the others as usual (an exit ends the
    /// wait with an error). Returns false on timeout.
    async fn wait_for_event(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&InstanceEvent) -> bool,
    ) -> Result<bool, OpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let live = self.live.as_mut().ok_or_else(not_running)?;
            let event = match tokio::time::timeout_at(deadline, live.events.recv()).await {
                Err(_) => return Ok(false),
                Ok(event) => event,
            };
            match event {
                Some(event) if wanted(&event) => return Ok(true),
                Some(event @ InstanceEvent::Exited { .. }) => {
                    self.on_event(event).await;
                    return Err(OpError::failed("QEMU exited while waiting"));
                }
                Some(event) => self.on_event(event).await,
                None => {
                    self.on_exit("the QEMU event stream ended".into(), false)
                        .await;
                    return Err(OpError::failed("QEMU exited while waiting"));
                }
            }
        }
    }
}

/// QEMU refused or failed a hot-plug step.
fn hotplug_failed(step: &str, e: vessel_qemu::BackendError) -> OpError {
    OpError::failed(format!("{step} failed: {}", error_chain(&e)))
}
