//! What the guest agent says about a running VM, when the guest runs one (`GET
//! /v1/vms/{name}/guest`, shown by `vessel vm show`), and freezing file systems around a live
//! snapshot. A guest without an agent costs one short ping, remembered for a while so that
//! repeated `vm show` calls stay quick.

use std::time::{Duration, Instant};

use vessel_api::{ApiError, GuestInfo};
use vessel_qemu::guest_agent::GuestAgent;
use vessel_qemu::RunFiles;

use crate::ctx::Ctx;
use crate::ctx::Service;

/// How long "this guest has no agent" is believed before asking again.
const NO_AGENT_REMEMBERED: Duration = Duration::from_secs(15);

pub fn agent(ctx: &Ctx, vm: &str) -> GuestAgent {
    GuestAgent::new(RunFiles::in_dir(&ctx.vm_dir(vm)).agent_socket)
}

/// Whether the guest of `vm` (QEMU `pid`) runs an agent. A guest that did not answer lately is
/// not asked again for a while, so callers (`vm show`, live snapshots) do not each pay a ping.
pub async fn agent_answers(ctx: &Ctx, vm: &str, pid: u32, agent: &GuestAgent) -> bool {
    let silent = &ctx.agents.silent;
    if let Some((cached_pid, at)) = silent.lock().get(vm) {
        if *cached_pid == pid && at.elapsed() < NO_AGENT_REMEMBERED {
            return false;
        }
    }
    let answers = agent.ping().await;
    let mut silent = silent.lock();
    if answers {
        silent.remove(vm);
    } else {
        silent.insert(vm.to_string(), (pid, Instant::now()));
    }
    answers
}

impl Service {
    pub async fn guest_info(&self, name: &str) -> Result<GuestInfo, ApiError> {
        let vm = self.get_vm(name).await?;
        let Some(pid) = vm.pid.filter(|_| vm.state.has_process()) else {
            return Ok(GuestInfo {
                agent: false,
                interfaces: Vec::new(),
                note: Some(format!("the VM is {}", vm.state.as_str())),
            });
        };
        let no_agent = || GuestInfo {
            agent: false,
            interfaces: Vec::new(),
            note: Some(
                "no guest agent answers; install and start qemu-guest-agent in the guest".into(),
            ),
        };
        let agent = agent(&self.ctx, name);
        if !agent_answers(&self.ctx, name, pid, &agent).await {
            return Ok(no_agent());
        }
        let interfaces = agent
            .interfaces()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(GuestInfo {
            agent: true,
            interfaces,
            note: None,
        })
    }
}
