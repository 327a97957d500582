//! The daemon's request logic, between the thin HTTP layer and the store: validate with
//! vessel-core, record desired state and an operation in one transaction, wait for the
//! reconciler to finish it.

use vessel_api::{
    ApiError, CreateVmRequest, DesiredState, ErrorCode, Event, HostInfo, Operation,
    OperationAction, OperationStatus, Usage, Vm, VmState,
};
use vessel_core::{check_action, spec_from_create, validate_name};
use vessel_storage::StoragePool;
use vessel_store::{Compare, Op, Txn};

use crate::common::errors::{internal, store_error};
use crate::common::events::EVENTS_PREFIX;
use crate::ctx::Service;
use crate::vm::model::{
    cloud_init_key, decode, desired_key, encode, load_vm, now_ms, op_key, spec_key, status_key,
    CloudInitData, Loaded, OpRecord, Payload, Provision, VmRecord, VmStatus, OPS_PREFIX,
};
use crate::vm::worker::check_files;

pub(crate) fn operation_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("operation {id} not found"))
        .with_hint("list operations with `vessel operation list`")
}

pub(crate) fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("VM {name:?} not found"))
        .with_hint("list VMs with `vessel vm list`")
}

impl Service {
    /// The VM list as JSON, from the in-memory view.
    pub async fn list_vms_json(
        &self,
        visible: &vessel_auth::Visibility,
    ) -> Result<bytes::Bytes, ApiError> {
        self.ctx.view.list_json(visible).await.map_err(internal)
    }

    /// A VM's records, read from the store (not the view): what a request checks before it
    /// writes.
    pub(crate) async fn load(&self, name: &str) -> Result<Loaded, ApiError> {
        validate_name("VM", name).map_err(ApiError::invalid)?;
        load_vm(self.ctx.store.as_ref(), name)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found(name))
    }

    pub async fn get_vm(&self, name: &str) -> Result<Vm, ApiError> {
        validate_name("VM", name).map_err(ApiError::invalid)?;
        let loaded = self.ctx.view.get(name).await.map_err(internal)?;
        Ok(loaded.ok_or_else(|| not_found(name))?.view())
    }

    /// Records a new VM (and its create operation) atomically; a duplicate name changes nothing.
    /// A VM made from an image gets its root disk from the create operation, which undoes the
    /// whole create if that fails.
    pub async fn create_vm(
        &self,
        request: &CreateVmRequest,
        identity: &vessel_auth::Identity,
    ) -> Result<Operation, ApiError> {
        validate_name("VM", &request.name).map_err(ApiError::invalid)?;
        let mut request = request.clone();
        let project = request
            .project
            .clone()
            .unwrap_or_else(crate::vm::model::default_project);
        self.resolve_boot_images(&mut request, &project, identity)
            .await?;
        let (provision, root_bytes) = match request.image.clone() {
            Some(image) => {
                self.usable_image(&image, vessel_api::ImageKind::Disk, &project, identity)
                    .await?;
                let (plan, bytes) = self.plan_root_disk(&mut request, &image).await?;
                (Some(plan), bytes)
            }
            None => (None, 0),
        };
        let request = &request;
        let mut spec = spec_from_create(request, self.ctx.host).map_err(ApiError::invalid)?;
        for nic in &request.nics {
            let planned = self.plan_nic(&spec, &project, nic).await?;
            spec.nics.push(planned);
        }
        let cloud_init = self.seal_cloud_init(request).await?;
        let desired = if request.start {
            DesiredState::Running
        } else {
            DesiredState::Stopped
        };
        let now = now_ms();
        let record = VmRecord {
            spec,
            created_at_ms: now,
            project: project.clone(),
        };
        check_files(&record)
            .map_err(|e| ApiError::invalid(e).with_hint("give a path the daemon can read"))?;
        let op = new_op(
            &self.ctx.config.host_name,
            &record,
            desired,
            Payload::Create { provision },
        );
        let need = Usage {
            disk_bytes: root_bytes,
            ..crate::access::projects::vm_usage(&record)
        };
        // Retried when another request changed the project between the quota check and the
        // commit (see projects.rs): the next round counts what that request added.
        for _ in 0..crate::access::projects::MAX_ATTEMPTS {
            let guard =
                crate::access::projects::reserve(self.ctx.store.as_ref(), &project, &need).await?;
            let mut txn = guard.apply(Txn::new());
            for nic in &record.spec.nics {
                txn = crate::network::service::reserve(txn, &request.name, nic);
            }
            if let Some(sealed) = &cloud_init {
                txn = txn.then(Op::Put(cloud_init_key(&request.name), encode(sealed)));
            }
            // The root disk made from an image belongs to the VM's project, and its size is
            // reserved in the project's disk quota with the VM (the worker makes it later).
            if let (Payload::Create { provision: Some(_) }, Some(pool)) =
                (&op.payload, &request.pool)
            {
                let root = vessel_core::spec::root_volume_name(&request.name);
                let entry = crate::storage::ownership::VolumeEntry::new(&project, root_bytes);
                let host = &self.ctx.config.host_name;
                txn = txn
                    .when(Compare::Missing(crate::storage::ownership::key(
                        host, pool, &root,
                    )))
                    .then(crate::storage::ownership::put(host, pool, &root, &entry));
            }
            let txn = txn
                .when(Compare::Missing(spec_key(&request.name)))
                .then(Op::Put(spec_key(&request.name), encode(&record)))
                .then(Op::Put(desired_key(&request.name), encode(&desired)))
                .then(Op::Put(
                    status_key(&request.name),
                    encode(&VmStatus::stopped(now)),
                ))
                .then(Op::Put(op_key(&op.operation.id), encode(&op)));
            let result = self.ctx.store.txn(txn).await.map_err(store_error)?;
            if result.succeeded {
                if !record.spec.nics.is_empty() {
                    // The NICs' port rules and DHCP bindings exist before their taps do.
                    self.ctx.net.sync(&self.ctx).await;
                }
                return Ok(op.operation);
            }
            if crate::common::records::exists(self.ctx.store.as_ref(), &spec_key(&request.name))
                .await?
            {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("a VM named {:?} already exists", request.name),
                )
                .with_hint("choose another name, or delete the existing VM first"));
            }
            if let (Payload::Create { provision: Some(_) }, Some(pool)) =
                (&op.payload, &request.pool)
            {
                let root = vessel_core::spec::root_volume_name(&request.name);
                if crate::storage::ownership::exists(&self.ctx, pool, &root).await? {
                    return Err(root_taken(pool, &root));
                }
            }
            if let Some(nic) =
                crate::network::service::first_taken(self.ctx.store.as_ref(), &record.spec.nics)
                    .await
            {
                return Err(crate::network::service::reservation_lost(nic));
            }
        }
        Err(crate::access::projects::contended(&project))
    }

    /// Turns `kernel_image` and `initrd_image` into the files of those images (of the VM's
    /// project, or public), which the VM then boots like a kernel given by path.
    async fn resolve_boot_images(
        &self,
        request: &mut CreateVmRequest,
        project: &str,
        identity: &vessel_auth::Identity,
    ) -> Result<(), ApiError> {
        use vessel_api::ImageKind;
        if request.kernel_image.is_some() && request.kernel.is_some() {
            return Err(ApiError::invalid(
                "give either a kernel file (--kernel) or a kernel image (--kernel-image), not both",
            ));
        }
        if request.initrd_image.is_some() && request.initrd.is_some() {
            return Err(ApiError::invalid(
                "give either an initrd file (--initrd) or an initrd image (--initrd-image), not both",
            ));
        }
        if let Some(image) = request.kernel_image.take() {
            request.kernel = Some(
                self.boot_file(&image, ImageKind::Kernel, project, identity)
                    .await?,
            );
        }
        if let Some(image) = request.initrd_image.take() {
            request.initrd = Some(
                self.boot_file(&image, ImageKind::Initrd, project, identity)
                    .await?,
            );
        }
        Ok(())
    }

    /// Checks that the image exists and where the root disk goes; fills in the pool. Also
    /// returns the root disk's size (what it takes of the project's disk quota).
    async fn plan_root_disk(
        &self,
        request: &mut CreateVmRequest,
        image: &str,
    ) -> Result<(Provision, u64), ApiError> {
        let location = self.image_location(image).await?;
        let pool = request
            .pool
            .get_or_insert_with(|| location.pool.clone())
            .clone();
        let copies = request.full_clone || request.encrypted;
        if !copies && pool != location.pool {
            return Err(ApiError::invalid(format!(
                "a linked clone lives in its image's pool ({:?}), not {pool:?}",
                location.pool
            ))
            .with_hint("leave out --pool, or copy the image with --full-clone"));
        }
        let root = vessel_core::spec::root_volume_name(&request.name);
        if crate::storage::pools::open_by_name(&self.ctx, &pool)
            .await?
            .volume(&root)
            .await
            .is_ok()
        {
            return Err(root_taken(&pool, &root));
        }
        let image_bytes = crate::storage::pools::open_by_name(&self.ctx, &location.pool)
            .await?
            .volume(image)
            .await
            .map_err(crate::storage::volumes::api_error)?
            .virtual_size;
        let bytes = request.disk_size_bytes.unwrap_or(image_bytes);
        if bytes < image_bytes {
            return Err(ApiError::invalid(format!(
                "the disk size ({bytes} bytes) is smaller than image {image:?} ({image_bytes} bytes)"
            ))
            .with_hint("give at least the image's size, or leave out --disk-size"));
        }
        let plan = Provision {
            image: image.to_string(),
            image_pool: location.pool,
            size_bytes: request.disk_size_bytes,
            full_clone: request.full_clone,
            encrypted: request.encrypted,
        };
        Ok((plan, bytes))
    }

    /// Validates the request's cloud-init data and wraps it with the master key.
    async fn seal_cloud_init(
        &self,
        request: &CreateVmRequest,
    ) -> Result<Option<vessel_secrets::WrappedSecret>, ApiError> {
        if request.user_data.is_none() && request.network_config.is_none() {
            return Ok(None);
        }
        let invalid = |e: vessel_cloudinit::SeedError| {
            ApiError::invalid(e.to_string())
                .with_hint("see https://cloudinit.readthedocs.io for the formats")
        };
        if let Some(user_data) = &request.user_data {
            vessel_cloudinit::validate_user_data(user_data.as_bytes()).map_err(invalid)?;
        }
        if let Some(network) = &request.network_config {
            vessel_cloudinit::validate_network_config(network.as_bytes()).map_err(invalid)?;
        }
        let data = CloudInitData {
            user_data: request.user_data.clone(),
            network_config: request.network_config.clone(),
        };
        let plain = serde_json::to_vec(&data).expect("plain data serializes");
        let sealed = self
            .ctx
            .keyring
            .read()
            .await
            .wrap(&plain, &crate::vm::cloud_init::aad(&request.name))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Some(sealed))
    }

    /// Checks an action against the VM's current state and records it (with the desired state it
    /// implies) for the VM's worker.
    pub async fn submit(&self, name: &str, payload: Payload) -> Result<Operation, ApiError> {
        self.submit_with(name, payload, None).await
    }

    /// Like [`Service::submit`], taking a new NIC's address and MAC in the same transaction.
    pub async fn submit_reserving(
        &self,
        name: &str,
        payload: Payload,
        nic: &vessel_api::VmNic,
    ) -> Result<Operation, ApiError> {
        self.submit_with(name, payload, Some(nic)).await
    }

    async fn submit_with(
        &self,
        name: &str,
        payload: Payload,
        reserve: Option<&vessel_api::VmNic>,
    ) -> Result<Operation, ApiError> {
        let action = payload.action();
        let Loaded {
            record,
            desired,
            status,
        } = self.load(name).await?;
        check_action(action, status.state, payload.force()).map_err(ApiError::conflict)?;
        if let Payload::Edit(edit) = &payload {
            let spec = vessel_core::apply_edit(&record.spec, edit, self.ctx.host)
                .map_err(ApiError::invalid)?;
            let edited = VmRecord {
                spec,
                ..record.clone()
            };
            check_files(&edited)
                .map_err(|e| ApiError::invalid(e).with_hint("give a path the daemon can read"))?;
            // Fails fast when the growth does not fit now; the worker checks again atomically
            // with the write of the edited spec, where racing growths are decided.
            crate::access::projects::reserve_growth(self.ctx.store.as_ref(), &record, &edited)
                .await?;
        }
        if let Payload::AttachDisk(disk) | Payload::DetachDisk(disk) = &payload {
            let changed = match action {
                OperationAction::AttachDisk => vessel_core::attach_disk(&record.spec, disk.clone()),
                _ => vessel_core::detach_disk(&record.spec, &disk.pool, &disk.volume),
            };
            changed.map_err(ApiError::invalid)?;
            if action == OperationAction::AttachDisk && status.state.has_process() {
                let vms = self.ctx.view.all().await.map_err(internal)?;
                let users = crate::vm::disks::conflicting_users(&vms, name, disk);
                if !users.is_empty() {
                    return Err(ApiError::conflict(format!(
                        "volume {:?} of pool {:?} is in use by running VM {}; a volume is written by one running VM at a time",
                        disk.volume, disk.pool, users.join(", ")
                    ))
                    .with_hint("stop that VM or detach the volume from it, or attach read-only; mark both attachments shareable only for cluster file systems"));
                }
            }
        }
        let target = desired_after(action, status.state);
        let op = new_op(
            &self.ctx.config.host_name,
            &record,
            target.unwrap_or(desired),
            payload,
        );
        // A blind write of the desired state: the VM's worker runs operations one at a time and
        // re-checks the state when it gets to this one, so no compare on the state is needed.
        let mut txn = Txn::new()
            .when(Compare::Exists(spec_key(name)))
            .then(Op::Put(op_key(&op.operation.id), encode(&op)));
        if let Some(target) = target {
            txn = txn.then(Op::Put(desired_key(name), encode(&target)));
        }
        if let Some(nic) = reserve {
            txn = crate::network::service::reserve(txn, name, nic);
        }
        if !self
            .ctx
            .store
            .txn(txn)
            .await
            .map_err(store_error)?
            .succeeded
        {
            return match (reserve, self.ctx.store.get(&spec_key(name)).await) {
                (Some(nic), Ok(Some(_))) => Err(crate::network::service::reservation_lost(nic)),
                _ => Err(not_found(name)),
            };
        }
        Ok(op.operation)
    }

    /// Waits until the operation has finished and returns it.
    pub async fn wait(&self, id: &str) -> Result<Operation, ApiError> {
        let key = op_key(id);
        let mut watch = self.ctx.store.watch(&key, 0).await.map_err(store_error)?;
        let mut current = self.get_operation(id).await?;
        while !current.status.is_terminal() {
            let event = watch.next().await.map_err(store_error)?;
            if event.kv.key == key && !event.kv.value.is_empty() {
                current = decode::<OpRecord>(&key, &event.kv.value)
                    .map_err(internal)?
                    .operation;
            }
        }
        Ok(current)
    }

    pub async fn get_operation(&self, id: &str) -> Result<Operation, ApiError> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(ApiError::invalid(format!("{id:?} is not an operation id")));
        }
        let kv = self
            .ctx
            .store
            .get(&op_key(id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| operation_not_found(id))?;
        Ok(decode::<OpRecord>(&kv.key, &kv.value)
            .map_err(internal)?
            .operation)
    }

    /// Cancels a running import, export or full clone, and waits until it has stopped.
    pub async fn cancel_operation(&self, id: &str) -> Result<Operation, ApiError> {
        let current = self.get_operation(id).await?;
        if current.status.is_terminal() {
            return Err(ApiError::conflict(format!(
                "operation {id} has already {}",
                current.status.as_str()
            )));
        }
        if !crate::storage::host_ops::cancel(&self.ctx, id) {
            return Err(ApiError::conflict(format!(
                "operation {id} ({}) cannot be cancelled; only imports, exports and full clones can",
                current.action.as_str()
            )));
        }
        self.wait(id).await
    }

    /// The operations of the projects `visible` shows, oldest first.
    pub async fn list_operations(
        &self,
        visible: &vessel_auth::Visibility,
    ) -> Result<Vec<Operation>, ApiError> {
        let (kvs, _) = self.ctx.store.list(OPS_PREFIX).await.map_err(store_error)?;
        let mut ops = kvs
            .iter()
            .map(|kv| decode::<OpRecord>(&kv.key, &kv.value).map(|r| r.operation))
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        ops.retain(|op| visible.shows(&op.project));
        ops.sort_by_key(|op| op.created_at_ms);
        Ok(ops)
    }

    /// The newest `limit` events, oldest first, of one VM or of all.
    pub async fn list_events(
        &self,
        vm: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, ApiError> {
        if let Some(vm) = vm {
            validate_name("VM", vm).map_err(ApiError::invalid)?;
        }
        let (kvs, _) = self
            .ctx
            .store
            .list(EVENTS_PREFIX)
            .await
            .map_err(store_error)?;
        let mut events = Vec::new();
        for kv in kvs.iter().rev() {
            let event: Event = decode(&kv.key, &kv.value).map_err(internal)?;
            if vm.is_none_or(|vm| event.vm == vm) {
                events.push(event);
                if events.len() == limit {
                    break;
                }
            }
        }
        events.reverse();
        Ok(events)
    }

    pub async fn host_info(&self) -> Result<HostInfo, ApiError> {
        let vms: Vec<Vm> = self
            .ctx
            .view
            .all()
            .await
            .map_err(internal)?
            .iter()
            .map(Loaded::view)
            .collect();
        Ok(HostInfo {
            name: self.ctx.config.host_name.clone(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            cpus: self.ctx.host.cpus,
            memory_mib: self.ctx.host.memory_mib,
            accelerator: self.ctx.accel.accel.as_str().to_string(),
            accelerator_reason: self.ctx.accel.reason.clone(),
            qemu_version: self.ctx.qemu_version.clone(),
            vms_defined: vms.len() as u32,
            vms_running: vms.iter().filter(|vm| vm.state.has_process()).count() as u32,
        })
    }
}

/// The desired state an action sets, if it sets one.
fn desired_after(action: OperationAction, state: VmState) -> Option<DesiredState> {
    match action {
        OperationAction::Start | OperationAction::Resume => Some(DesiredState::Running),
        OperationAction::Stop | OperationAction::Kill => Some(DesiredState::Stopped),
        OperationAction::Pause if state.has_process() => Some(DesiredState::Paused),
        _ => None,
    }
}

fn new_op(host: &str, vm: &VmRecord, target: DesiredState, payload: Payload) -> OpRecord {
    OpRecord {
        operation: Operation {
            id: uuid::Uuid::new_v4().to_string(),
            vm: vm.spec.name.clone(),
            resource: None,
            project: vm.project.clone(),
            progress: None,
            result: None,
            action: payload.action(),
            status: OperationStatus::Pending,
            error: None,
            error_code: None,
            force: payload.force(),
            timeout_secs: payload.timeout_secs(),
            created_at_ms: now_ms(),
            finished_at_ms: None,
        },
        target: Some(target),
        payload,
        resumed: false,
        host: host.to_string(),
    }
}

fn root_taken(pool: &str, root: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AlreadyExists,
        format!("pool {pool:?} already has a volume {root:?}, the name of this VM's root disk"),
    )
    .with_hint("delete that volume or choose another VM name")
}
