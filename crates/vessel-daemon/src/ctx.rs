//! What every part of the daemon shares.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use vessel_core::HostCapacity;
use vessel_qemu::{AccelChoice, Backend};
use vessel_store::Store;

use crate::common::events::{self, EVENTS_KEPT};
use crate::config::Config;
use crate::vm::console::ConsoleHub;
use crate::vm::model::{now_ms, Event};
use crate::vm::view::VmView;
use vessel_api::EventKind;

/// The daemon's request logic: one value that the routes of every feature share as their
/// state. Each feature adds its methods in its own folder (`impl Service` in `vm/service.rs`,
/// `storage/pools.rs`, `network/service.rs`...).
#[derive(Clone)]
pub struct Service {
    pub ctx: Arc<Ctx>,
}

pub struct Ctx {
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
    pub accel: AccelChoice,
    pub config: Config,
    pub host: HostCapacity,
    pub qemu_version: String,
    pub view: Arc<VmView>,
    /// Open storage pools by name, with the path each was opened at.
    pub pools: tokio::sync::Mutex<HashMap<String, (PathBuf, Arc<vessel_storage::DirPool>)>>,
    /// The master key (and, during a rotation, its successor) that wraps volume keys.
    pub keyring: tokio::sync::RwLock<vessel_secrets::Keyring>,
    /// Which guests did not answer their agent lately.
    pub agents: crate::vm::agent_cache::AgentCache,
    /// Performance samples of VMs and the host.
    pub sampler: crate::observe::samples::Sampler,
    /// Key records of encrypted volumes being created (see `volume_keys::create`).
    pub pending_keys: Mutex<std::collections::HashSet<String>>,
    /// The host side of networks: bridges, taps, firewall, DHCP servers.
    pub net: crate::network::host_state::NetHost,
    /// Cancel tokens of running long operations, by operation id.
    pub cancels: Mutex<HashMap<String, vessel_storage::CancelToken>>,
    /// Volumes being resized (`pool/volume`): a second resize meanwhile is refused with 409.
    pub resizing: Mutex<std::collections::HashSet<String>>,
    consoles: Mutex<HashMap<String, Arc<ConsoleHub>>>,
}

impl Ctx {
    pub async fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn Backend>,
        accel: AccelChoice,
        config: Config,
        host: HostCapacity,
        qemu_version: String,
        keyring: vessel_secrets::Keyring,
    ) -> anyhow::Result<Ctx> {
        let view = VmView::start(Arc::clone(&store), config.event_buffer).await?;
        Ok(Ctx {
            view,
            pools: tokio::sync::Mutex::new(HashMap::new()),
            keyring: tokio::sync::RwLock::new(keyring),
            store,
            backend,
            accel,
            config,
            host,
            qemu_version,
            consoles: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            resizing: Mutex::new(std::collections::HashSet::new()),
            pending_keys: Mutex::new(std::collections::HashSet::new()),
            sampler: crate::observe::samples::Sampler::default(),
            net: crate::network::host_state::NetHost::default(),
            agents: crate::vm::agent_cache::AgentCache::default(),
        })
    }

    /// The directory that holds a VM's sockets, QEMU log and console log.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.config.data_dir.join("vms").join(name)
    }

    pub fn console(&self, name: &str) -> Arc<ConsoleHub> {
        let mut consoles = self.consoles.lock();
        consoles
            .entry(name.to_string())
            .or_insert_with(|| ConsoleHub::new(&self.vm_dir(name), self.config.console_log_bytes))
            .clone()
    }

    pub fn forget_console(&self, name: &str) {
        self.consoles.lock().remove(name);
    }

    /// Records an event about a VM (or, with `vm` empty, about the host) in the store and the
    /// log; it carries the VM's project, so that only callers who may read that project see it.
    /// Failing to record one is logged, not fatal: events explain, they do not decide.
    pub async fn event(&self, vm: &str, message: impl Into<String>) {
        let project = self.project_of_vm(vm).await;
        self.record_event(EventKind::Info, vm, project, message.into())
            .await;
    }

    /// An event about an object of `project`: a VM whose record may be gone (its deletion), or,
    /// with `vm` empty, something else of the project (a network...).
    pub async fn event_in(&self, project: &str, vm: &str, message: impl Into<String>) {
        self.record_event(
            EventKind::Info,
            vm,
            Some(project.to_string()),
            message.into(),
        )
        .await;
    }

    /// An event nobody asked for that an operator should see: a crash, a panic, a restart loop.
    pub async fn alert(&self, vm: &str, message: impl Into<String>) {
        let project = self.project_of_vm(vm).await;
        self.record_event(EventKind::Alert, vm, project, message.into())
            .await;
    }

    /// The project of a VM as the store has it now (`None`: no VM, or it is gone).
    async fn project_of_vm(&self, vm: &str) -> Option<String> {
        if vm.is_empty() {
            return None;
        }
        let kv = self
            .store
            .get(&crate::vm::model::spec_key(vm))
            .await
            .ok()??;
        let record: crate::vm::model::VmRecord =
            crate::vm::model::decode(&kv.key, &kv.value).ok()?;
        Some(record.project)
    }

    async fn record_event(
        &self,
        kind: EventKind,
        vm: &str,
        project: Option<String>,
        message: String,
    ) {
        match kind {
            EventKind::Alert => tracing::warn!(vm, "{message}"),
            _ => tracing::info!(vm, "{message}"),
        }
        let event = Event::new(kind, vm, message, now_ms()).in_project(project);
        if let Err(e) = events::append(self.store.as_ref(), &event, EVENTS_KEPT).await {
            tracing::warn!(error = %e, "could not record event");
        }
    }
}
