//! What the host side of networks keeps between calls, held by `Ctx` (its own file so that it
//! depends on nothing that depends on `Ctx`); `host.rs` does the work.

use std::collections::HashMap;

use parking_lot::Mutex as StdMutex;
use tokio::sync::{watch, Mutex};
use vessel_dhcp::{Bindings, DhcpHandle, ServerConfig};
use vessel_net::{FirewallPlan, Netlink};

pub(super) struct DhcpRuntime {
    pub(super) config: ServerConfig,
    pub(super) bindings: watch::Sender<Bindings>,
    pub(super) _handle: DhcpHandle,
}

#[derive(Default)]
pub struct NetHost {
    /// Serializes network changes (create, update, delete).
    pub(super) changes: Mutex<()>,
    /// Serializes [`NetHost::sync`] and remembers what it applied last.
    pub(super) applied: Mutex<Option<FirewallPlan>>,
    pub(super) dhcp: StdMutex<HashMap<String, DhcpRuntime>>,
    pub(super) nl: std::sync::OnceLock<Netlink>,
}

impl NetHost {
    /// The daemon's one netlink connection, opened at first use (in the daemon's namespace).
    pub(super) fn netlink(&self) -> Result<Netlink, String> {
        if let Some(nl) = self.nl.get() {
            return Ok(nl.clone());
        }
        let nl = Netlink::connect().map_err(|e| format!("netlink: {e}"))?;
        Ok(self.nl.get_or_init(|| nl).clone())
    }
}
