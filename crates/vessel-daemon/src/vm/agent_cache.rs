//! The guest agents that did not answer lately, so that `vm show` and live snapshots do not each
//! pay a ping to a guest without one (see `guest.rs`). Its own file because `Ctx` holds it.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

#[derive(Default)]
pub struct AgentCache {
    /// VM -> (QEMU pid, when the agent did not answer).
    pub(super) silent: Mutex<HashMap<String, (u32, Instant)>>,
}
