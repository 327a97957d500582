//! The worker's side of snapshots: taking (live or offline), reverting to and deleting one.

use std::time::Duration;

use vessel_api::{CreateSnapshotRequest, DesiredState};

use super::{OpResult, Worker};
use crate::common::errors::error_chain;
use crate::common::op_error::OpError;
use crate::vm::disks;
use crate::vm::model::{now_ms, Loaded, VmRecord};
use crate::vm::snapshot_quota;
use crate::vm::snapshots;

impl Worker {
    /// The QMP node names of the running VM's writable disks (the first holds memory state).
    async fn live_disk_nodes(&self, vm: &VmRecord) -> Result<Vec<String>, OpError> {
        let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
        let nodes = vessel_qemu::snapshot::vm_disk_nodes(&self.launch_request(vm, disks));
        if nodes.is_empty() {
            return Err(OpError::invalid("the VM has no writable disk to snapshot"));
        }
        Ok(nodes)
    }

    /// Takes the snapshot (live over QMP, or offline with qemu-img); returns the size of the
    /// memory state it saved (0 without memory).
    async fn take_snapshot(
        &self,
        request: &CreateSnapshotRequest,
        vm: &VmRecord,
    ) -> Result<u64, OpError> {
        let mut vm_state_bytes = 0;
        match &self.live {
            Some(live) => {
                let nodes = self.live_disk_nodes(vm).await?;
                if request.memory {
                    live.instance
                        .snapshot_save(&request.name, &nodes[0], &nodes)
                        .await
                        .map_err(|e| OpError::failed(error_chain(&e)))?;
                    vm_state_bytes = live
                        .instance
                        .snapshot_list(&nodes[0])
                        .await
                        .ok()
                        .and_then(|list| list.into_iter().find(|s| s.name == request.name))
                        .map_or(0, |s| s.vm_state_bytes);
                } else {
                    // With a guest agent, the guest's file systems are frozen for the snapshot,
                    // so it holds no half-written file-system state; without one it is
                    // crash-consistent (all disks at one instant).
                    let agent = crate::vm::guest::agent(&self.ctx, &self.name);
                    let pid = live.instance.pid().pid;
                    let frozen = if crate::vm::guest::agent_answers(&self.ctx, &self.name, pid, &agent).await {
                        match agent.freeze().await {
                            Ok(n) => {
                                self.ctx
                                    .event(
                                        &self.name,
                                        format!("{n} guest file systems frozen for snapshot {}", request.name),
                                    )
                                    .await;
                                true
                            }
                            Err(e) => {
                                tracing::warn!(vm = %self.name, error = %e, "could not freeze the guest's file systems; the snapshot is crash-consistent");
                                false
                            }
                        }
                    } else {
                        false
                    };
                    let taken = live.instance.snapshot_disks(&nodes, &request.name).await;
                    if frozen {
                        if let Err(e) = agent.thaw().await {
                            self.ctx
                                .alert(&self.name, format!("could not thaw the guest's file systems after a snapshot: {e}"))
                                .await;
                        }
                    }
                    let pause = taken.map_err(|e| OpError::failed(error_chain(&e)))?;
                    tracing::info!(vm = %self.name, snapshot = %request.name, pause_ms = pause.as_millis() as u64, "disk snapshot taken");
                }
            }
            None if request.memory => {
                return Err(OpError::conflict(
                    "the VM is not running, so there is no running state to save; drop --memory or start it",
                ))
            }
            None => {
                let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
                snapshots::offline(&vm.spec, &disks, &request.name, snapshots::Offline::Create)
                    .await
                    .map_err(OpError::failed)?;
            }
        }
        Ok(vm_state_bytes)
    }

    pub(super) async fn snapshot_create(&mut self, request: &CreateSnapshotRequest) -> OpResult {
        let Loaded { record: vm, .. } = self.load_existing().await?;
        let (_, head) = snapshots::load(&self.ctx, &self.name)
            .await
            .map_err(OpError::failed)?;
        // Its share of the disk quota is reserved before it is taken (a refusal keeps its
        // code: 409 quota_exceeded), and settled to what it measured after.
        let store = self.ctx.store.as_ref();
        let pinned = snapshot_quota::pinned_bytes(&self.ctx, &vm)
            .await
            .map_err(OpError::failed)?;
        let estimate = snapshot_quota::estimate(&vm, request.memory, pinned);
        snapshot_quota::reserve(store, &vm, &request.name, estimate).await?;
        let vm_state_bytes = match self.take_snapshot(request, &vm).await {
            Ok(bytes) => bytes,
            Err(e) => {
                if let Err(undo) = snapshot_quota::release(store, &self.name, &request.name).await {
                    tracing::warn!(vm = %self.name, error = %undo.message, "could not give back a snapshot's reservation");
                }
                return Err(e);
            }
        };
        snapshot_quota::settle(store, &vm, &request.name, vm_state_bytes + pinned).await?;
        let saved = snapshots::SnapshotRecord {
            name: request.name.clone(),
            created_at_ms: now_ms(),
            memory: request.memory,
            vm_state_bytes,
            parent: head,
            spec: vm.spec.clone(),
        };
        snapshots::save_new(&self.ctx, &self.name, &saved).await?;
        self.ctx
            .event(&self.name, format!("snapshot {} taken", request.name))
            .await;
        Ok(())
    }

    /// Reverts to a snapshot. Whatever ran is discarded. With memory state the VM resumes
    /// where the snapshot left it (running); a disk-only revert leaves the VM stopped.
    pub(super) async fn snapshot_revert(&mut self, name: &str, timeout: Duration) -> OpResult {
        let snapshot = snapshots::record(&self.ctx, &self.name, name).await?;
        // Refused before anything is stopped when the restored CPUs and memory do not fit the
        // project's quota; checked again atomically with the write below.
        let current = self.load_existing().await?.record;
        crate::access::projects::reserve_growth(
            self.ctx.store.as_ref(),
            &current,
            &snapshots::restored(&current, &snapshot),
        )
        .await?;
        if self.live.is_some() {
            // The current state is being thrown away: no need to wait for a clean shutdown.
            self.save(
                &self.load_existing().await?.status,
                Some(DesiredState::Stopped),
            )
            .await?;
            self.stop(true, timeout, "snapshot revert").await?;
        }
        let Loaded { record: vm, .. } = self.load_existing().await?;
        // The snapshot's spec: the disks (and settings) the snapshot was taken with.
        let restored = snapshots::restored(&vm, &snapshot);
        let head = snapshots::reverted_head(&self.name, &snapshot.name);
        self.put_spec_within_quota(&vm, &restored, head).await?;
        let Loaded { record: vm, .. } = self.load_existing().await?;
        let disks = disks::resolve_disks(&self.ctx, &vm.project, &vm.spec).await?;
        if snapshot.memory {
            let request = self.prepare_launch(&vm).await?;
            let nodes = vessel_qemu::snapshot::vm_disk_nodes(&request);
            let launched = self.ctx.backend.launch_paused(&request).await;
            if let Some(seed) = &request.seed {
                let _ = std::fs::remove_file(seed);
            }
            let instance = launched.map_err(|e| {
                OpError::failed(format!("QEMU could not start the VM: {}", error_chain(&e)))
            })?;
            if let Err(e) = instance
                .snapshot_load(&snapshot.name, &nodes[0], &nodes)
                .await
            {
                let _ = instance.kill();
                return Err(OpError::failed(format!(
                    "loading the snapshot failed: {}",
                    error_chain(&e)
                )));
            }
            instance
                .resume()
                .await
                .map_err(|e| OpError::failed(format!("resume failed: {}", error_chain(&e))))?;
            self.adopt_started(instance, false).await?;
            self.save(
                &self.load_existing().await?.status,
                Some(DesiredState::Running),
            )
            .await?;
        } else {
            snapshots::offline(&vm.spec, &disks, &snapshot.name, snapshots::Offline::Revert)
                .await
                .map_err(OpError::failed)?;
        }
        self.ctx
            .event(
                &self.name,
                format!("reverted to snapshot {}", snapshot.name),
            )
            .await;
        Ok(())
    }

    pub(super) async fn snapshot_delete(&mut self, name: &str) -> OpResult {
        let snapshot = snapshots::record(&self.ctx, &self.name, name).await?;
        // The disks it was taken on (disks attached since do not have it).
        let spec = snapshot.spec.clone();
        match &self.live {
            Some(live) => {
                let Loaded { record: mut vm, .. } = self.load_existing().await?;
                vm.spec.disks.retain(|d| spec.disks.contains(d));
                let nodes = self.live_disk_nodes(&vm).await?;
                live.instance
                    .snapshot_delete(&nodes, &snapshot.name)
                    .await
                    .map_err(|e| OpError::failed(error_chain(&e)))?;
            }
            None => {
                let project = self.load_existing().await?.record.project;
                let disks = disks::resolve_disks(&self.ctx, &project, &spec).await?;
                snapshots::offline(&spec, &disks, &snapshot.name, snapshots::Offline::Delete)
                    .await
                    .map_err(OpError::failed)?;
            }
        }
        snapshots::forget(&self.ctx, &self.name, &snapshot.name)
            .await
            .map_err(OpError::failed)?;
        snapshot_quota::release(self.ctx.store.as_ref(), &self.name, &snapshot.name).await?;
        self.ctx
            .event(&self.name, format!("snapshot {} deleted", snapshot.name))
            .await;
        Ok(())
    }
}
