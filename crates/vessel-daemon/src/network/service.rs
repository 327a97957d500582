//! Networks and VM NICs: the records, the address and MAC reservations, and the requests.
//!
//! - `networks/<name>`       [`Network`] (without `used_by`, which is computed)
//! - `ipam/<network>/<ip>`   `"<vm>/<nic>"`: an address is taken by exactly one NIC
//! - `macs/<mac>`            `"<vm>/<nic>"`: a MAC is used by exactly one NIC on this host
//!
//! Reservations are created with `Compare::Missing` in the same transaction as the request that
//! takes them, so two requests racing for the last address cannot both win.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use vessel_api::{
    AddNicRequest, ApiError, CreateNetworkRequest, ErrorCode, Network, NetworkKind, Operation,
    OperationAction, UpdateNetworkRequest, VmNic, VmSpec,
};
use vessel_core::network::{self as rules, NicChoice};
use vessel_store::{Compare, Op, Txn};

use crate::common::errors::store_error;
use crate::ctx::Ctx;
use crate::ctx::Service;
use crate::vm::model::Payload;
use crate::vm::model::{decode, encode, now_ms, Loaded};

pub const NETWORKS_PREFIX: &str = "networks/";
const IPAM_PREFIX: &str = "ipam/";
const MACS_PREFIX: &str = "macs/";

pub fn network_key(name: &str) -> String {
    format!("{NETWORKS_PREFIX}{name}")
}

/// How many networks a project has (the networks' quota counter).
pub async fn project_networks(
    store: &dyn vessel_store::Store,
    project: &str,
) -> Result<u64, ApiError> {
    let (kvs, _) = store.list(NETWORKS_PREFIX).await.map_err(store_error)?;
    let mut count = 0;
    for kv in &kvs {
        let network: Network =
            decode(&kv.key, &kv.value).map_err(crate::common::errors::internal)?;
        if network.project == project {
            count += 1;
        }
    }
    Ok(count)
}

fn ipam_prefix(network: &str) -> String {
    format!("{IPAM_PREFIX}{network}/")
}

fn ipam_key(network: &str, ip: &str) -> String {
    format!("{IPAM_PREFIX}{network}/{ip}")
}

fn mac_key(mac: &str) -> String {
    format!("{MACS_PREFIX}{mac}")
}

fn owner(vm: &str, nic: &VmNic) -> Vec<u8> {
    format!("{vm}/{}", nic.id).into_bytes()
}

/// Conditions and writes that take a NIC's address and MAC.
pub fn reserve(txn: Txn, vm: &str, nic: &VmNic) -> Txn {
    let mut txn = txn
        .when(Compare::Missing(mac_key(&nic.mac)))
        .then(Op::Put(mac_key(&nic.mac), owner(vm, nic)));
    if let Some(ip) = &nic.ipv4 {
        let key = ipam_key(&nic.network, ip);
        txn = txn
            .when(Compare::Missing(key.clone()))
            .then(Op::Put(key, owner(vm, nic)));
    }
    txn
}

/// Writes that give a NIC's address and MAC back.
pub fn release(txn: Txn, nic: &VmNic) -> Txn {
    let mut txn = txn.then(Op::Delete(mac_key(&nic.mac)));
    if let Some(ip) = &nic.ipv4 {
        txn = txn.then(Op::Delete(ipam_key(&nic.network, ip)));
    }
    txn
}

pub(crate) fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("network {name:?} not found"))
        .with_hint("list networks with `vessel network list`")
}

/// Only root can make bridges and taps; say so instead of failing half-way.
fn check_privileges(kind: NetworkKind) -> Result<(), ApiError> {
    let uid = crate::network::host::euid();
    if kind.uses_tap() && uid != 0 {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{} networks need root (bridges, taps and nftables need CAP_NET_ADMIN); this daemon runs as uid {uid}, so only user networks are available",
                kind.as_str()
            ),
        )
        .with_hint("create a user network (--kind user), or run the daemon as root"));
    }
    Ok(())
}

pub async fn list_records(ctx: &Ctx) -> Result<Vec<Network>, ApiError> {
    let (kvs, _) = ctx.store.list(NETWORKS_PREFIX).await.map_err(store_error)?;
    kvs.iter()
        .map(|kv| decode::<Network>(&kv.key, &kv.value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal(e.to_string()))
}

pub async fn record(ctx: &Ctx, name: &str) -> Result<Network, ApiError> {
    rules::validate_network_name(name).map_err(ApiError::invalid)?;
    let kv = ctx
        .store
        .get(&network_key(name))
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(name))?;
    decode(&kv.key, &kv.value).map_err(|e| ApiError::internal(e.to_string()))
}

/// The project of a network (`None`: no such network, or a name that cannot be one).
pub async fn project_of(ctx: &Ctx, name: &str) -> Option<String> {
    record(ctx, name).await.ok().map(|n| n.project)
}

/// `vm/nic` of every NIC on the network.
fn users(vms: &[Loaded], network: &str) -> Vec<String> {
    vms.iter()
        .flat_map(|vm| {
            vm.record
                .spec
                .nics
                .iter()
                .filter(|n| n.network == network)
                .map(|n| format!("{}/{}", vm.record.spec.name, n.id))
        })
        .collect()
}

impl Service {
    async fn all_vms(&self) -> Result<Vec<Loaded>, ApiError> {
        self.ctx
            .view
            .all()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The networks of the projects `visible` shows.
    pub async fn list_networks(
        &self,
        visible: &vessel_auth::Visibility,
    ) -> Result<Vec<Network>, ApiError> {
        let vms = self.all_vms().await?;
        let mut networks = list_records(&self.ctx).await?;
        networks.retain(|n| visible.shows(&n.project));
        for network in &mut networks {
            network.used_by = users(&vms, &network.name);
        }
        Ok(networks)
    }

    pub async fn get_network(&self, name: &str) -> Result<Network, ApiError> {
        let mut network = record(&self.ctx, name).await?;
        network.used_by = users(&self.all_vms().await?, name);
        Ok(network)
    }

    /// Makes the network on the host, then records it; a failure on the way removes what was
    /// made, so a refused request leaves neither a record nor an interface.
    pub async fn create_network(&self, req: &CreateNetworkRequest) -> Result<Network, ApiError> {
        rules::validate_network_name(&req.name).map_err(ApiError::invalid)?;
        check_privileges(req.kind)?;
        let _guard = self.ctx.net.lock().await;
        let existing = list_records(&self.ctx).await?;
        if existing.iter().any(|n| n.name == req.name) {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("a network named {:?} already exists", req.name),
            )
            .with_hint("choose another name, or delete the existing network first"));
        }
        let network =
            rules::network_from_create(req, &existing, now_ms()).map_err(ApiError::invalid)?;
        let one = vessel_api::Usage {
            networks: 1,
            ..Default::default()
        };
        // Checked before anything is made; re-checked at the commit below.
        crate::access::projects::reserve(self.ctx.store.as_ref(), &network.project, &one).await?;
        self.ctx.net.check_host(&network).await.map_err(|e| {
            ApiError::invalid(e).with_hint("see `ip link` and `ip route` on the host")
        })?;
        self.ctx.net.ensure(&network).await.map_err(|e| {
            ApiError::internal(format!("could not set up network {:?}: {e}", network.name))
        })?;
        if let Err(e) = self.record_network(&network, &one).await {
            self.ctx.net.remove(&network).await;
            return Err(e);
        }
        self.ctx.net.sync(&self.ctx).await;
        self.ctx
            .event(
                "",
                format!(
                    "network {} ({}) created",
                    network.name,
                    network.kind.as_str()
                ),
            )
            .await;
        Ok(network)
    }

    /// Writes a new network's record if the project's quota still allows it (the check is
    /// part of the commit: a VM create racing in the same project makes this round retry).
    async fn record_network(
        &self,
        network: &Network,
        one: &vessel_api::Usage,
    ) -> Result<(), ApiError> {
        let key = network_key(&network.name);
        for _ in 0..crate::access::projects::MAX_ATTEMPTS {
            let guard =
                crate::access::projects::reserve(self.ctx.store.as_ref(), &network.project, one)
                    .await?;
            let txn = guard
                .apply(Txn::new())
                .when(Compare::Missing(key.clone()))
                .then(Op::Put(key.clone(), encode(network)));
            if self
                .ctx
                .store
                .txn(txn)
                .await
                .map_err(store_error)?
                .succeeded
            {
                return Ok(());
            }
            if crate::common::records::exists(self.ctx.store.as_ref(), &key).await? {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("a network named {:?} already exists", network.name),
                ));
            }
        }
        Err(crate::access::projects::contended(&network.project))
    }

    pub async fn update_network(
        &self,
        name: &str,
        req: &UpdateNetworkRequest,
    ) -> Result<Network, ApiError> {
        let _guard = self.ctx.net.lock().await;
        let current = record(&self.ctx, name).await?;
        let network = rules::apply_network_update(&current, req).map_err(ApiError::invalid)?;
        self.ctx
            .net
            .ensure(&network)
            .await
            .map_err(|e| ApiError::internal(format!("could not update network {name:?}: {e}")))?;
        self.ctx
            .store
            .put(&network_key(name), encode(&network))
            .await
            .map_err(store_error)?;
        self.ctx.net.sync(&self.ctx).await;
        self.ctx
            .event_in(&network.project, "", format!("network {name} updated"))
            .await;
        self.get_network(name).await
    }

    /// Deletes a network no NIC uses: its record, then what it has on the host.
    pub async fn delete_network(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.ctx.net.lock().await;
        let network = record(&self.ctx, name).await?;
        let used = users(&self.all_vms().await?, name);
        if !used.is_empty() {
            return Err(ApiError::conflict(format!(
                "network {name:?} is used by {}",
                used.join(", ")
            ))
            .with_hint("remove those NICs first (vessel vm nic remove VM NIC)"));
        }
        let txn = Txn::new()
            .then(Op::Delete(network_key(name)))
            .then(Op::DeletePrefix(ipam_prefix(name)));
        self.ctx.store.txn(txn).await.map_err(store_error)?;
        self.ctx.net.remove(&network).await;
        self.ctx.net.sync(&self.ctx).await;
        self.ctx
            .event_in(&network.project, "", format!("network {name} deleted"))
            .await;
        Ok(())
    }

    /// Decides a new NIC for a VM: its network, MAC and address, against what is taken now.
    /// The reservation happens with the operation (see [`reserve`]).
    pub async fn plan_nic(
        &self,
        spec: &VmSpec,
        project: &str,
        req: &AddNicRequest,
    ) -> Result<VmNic, ApiError> {
        // A network of another project is answered exactly as a missing one: the refusal
        // must not tell a tenant what other projects have.
        let network = match record(&self.ctx, &req.network).await {
            Ok(network) if network.project == project => network,
            Ok(_)
            | Err(ApiError {
                code: vessel_api::ErrorCode::NotFound,
                ..
            }) => {
                return Err(ApiError::not_found(format!(
                    "network {:?} not found in project {project:?} (VM {:?}'s)",
                    req.network, spec.name
                ))
                .with_hint("a NIC uses a network of its VM's project; list them with `vessel network list`"));
            }
            Err(e) => return Err(e),
        };
        if network.kind.uses_tap() {
            check_privileges(network.kind)?;
        }
        let macs = self.macs_in_use().await?;
        let mac = match &req.mac {
            Some(mac) => mac.clone(),
            None => random_free_mac(&macs)?,
        };
        let taken = self.taken_addresses(&network.name).await?;
        let taken: HashSet<Ipv4Addr> = taken
            .union(&spec_addresses(spec, &network.name))
            .copied()
            .collect();
        let ipv4 = rules::assign_address(&network, req.ipv4.as_deref(), &taken)
            .map_err(ApiError::invalid)?;
        let choice = NicChoice {
            request: req,
            network: &network,
            mac,
            ipv4,
        };
        let (_, nic) = rules::add_nic(spec, &choice, &macs).map_err(ApiError::invalid)?;
        Ok(nic)
    }

    async fn macs_in_use(&self) -> Result<HashSet<String>, ApiError> {
        let (kvs, _) = self
            .ctx
            .store
            .list(MACS_PREFIX)
            .await
            .map_err(store_error)?;
        Ok(kvs
            .iter()
            .map(|kv| kv.key[MACS_PREFIX.len()..].to_string())
            .collect())
    }

    async fn taken_addresses(&self, network: &str) -> Result<HashSet<Ipv4Addr>, ApiError> {
        let prefix = ipam_prefix(network);
        let (kvs, _) = self.ctx.store.list(&prefix).await.map_err(store_error)?;
        Ok(kvs
            .iter()
            .filter_map(|kv| kv.key[prefix.len()..].parse().ok())
            .collect())
    }

    /// Adds a NIC; hot-plugged when the VM runs.
    pub async fn add_nic(&self, vm: &str, req: &AddNicRequest) -> Result<Operation, ApiError> {
        let loaded = self.load(vm).await?;
        vessel_core::check_action(OperationAction::AddNic, loaded.status.state, false)
            .map_err(ApiError::conflict)?;
        let nic = self
            .plan_nic(&loaded.record.spec, &loaded.record.project, req)
            .await?;
        self.submit_reserving(vm, Payload::AddNic(nic.clone()), &nic)
            .await
    }

    pub async fn remove_nic(&self, vm: &str, nic: &str) -> Result<Operation, ApiError> {
        let loaded = self.load(vm).await?;
        let (_, removed) =
            rules::remove_nic(&loaded.record.spec, nic).map_err(ApiError::not_found)?;
        self.submit(vm, Payload::RemoveNic(removed)).await
    }
}

/// Addresses the spec's own NICs hold on the network (a create's earlier NICs are not yet
/// reserved when the later ones are planned).
pub fn spec_addresses(spec: &VmSpec, network: &str) -> HashSet<Ipv4Addr> {
    spec.nics
        .iter()
        .filter(|n| n.network == network)
        .filter_map(|n| n.ipv4.as_deref()?.parse().ok())
        .collect()
}

fn random_free_mac(in_use: &HashSet<String>) -> Result<String, ApiError> {
    for _ in 0..64 {
        let mut bytes = [0u8; 3];
        getrandom::fill(&mut bytes)
            .map_err(|e| ApiError::internal(format!("no randomness for a MAC: {e}")))?;
        let mac = rules::mac_from_random(bytes);
        if !in_use.contains(&mac) {
            return Ok(mac);
        }
    }
    Err(ApiError::internal("could not find a free MAC address"))
}

/// The first NIC whose MAC or address another NIC holds now.
pub async fn first_taken<'a>(
    store: &dyn vessel_store::Store,
    nics: &'a [VmNic],
) -> Option<&'a VmNic> {
    for nic in nics {
        let mut keys = vec![mac_key(&nic.mac)];
        if let Some(ip) = &nic.ipv4 {
            keys.push(ipam_key(&nic.network, ip));
        }
        for key in keys {
            if matches!(store.get(&key).await, Ok(Some(_))) {
                return Some(nic);
            }
        }
    }
    None
}

/// A reservation that lost a race: someone took the address or MAC after it was planned.
pub fn reservation_lost(nic: &VmNic) -> ApiError {
    ApiError::conflict(format!(
        "address {} or MAC {} was taken by another request at the same time",
        nic.ipv4.as_deref().unwrap_or("-"),
        nic.mac
    ))
    .with_hint("try again")
}
