//! Client calls under `/v1/vms`: lifecycle, edits, disks, snapshots, NICs, the console, what
//! the guest agent and the sampler say about a VM.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use vessel_api::{
    AddNicRequest, AttachDiskRequest, CreateSnapshotRequest, CreateVmRequest, EditVmRequest,
    GuestInfo, Operation, Snapshot, StopVmRequest, Vm, VmNic,
};

use super::{item_path, to_json, with_wait, Client, ClientError, Outcome};

/// The protocol name the console route upgrades to.
pub const CONSOLE_UPGRADE_PROTOCOL: &str = "vessel-console";

/// A lifecycle action on a VM, with the body the route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Stop(StopVmRequest),
    Kill,
    /// `force`: hard reset instead of a clean power-off and start.
    Reboot {
        force: bool,
    },
    Pause,
    Resume,
}

impl VmAction {
    /// The last path segment of the action's route.
    pub fn verb(&self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop(_) => "stop",
            VmAction::Kill => "kill",
            VmAction::Reboot { .. } => "reboot",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
        }
    }

    fn body(&self) -> Option<Vec<u8>> {
        match self {
            VmAction::Stop(req) => Some(to_json(req)),
            VmAction::Reboot { force } => Some(to_json(&serde_json::json!({ "force": force }))),
            _ => None,
        }
    }
}

/// `/v1/vms/{name}` or `/v1/vms/{name}/{rest}`.
fn vm_path(name: &str, rest: &str) -> String {
    let base = item_path("/v1/vms", name);
    if rest.is_empty() {
        base
    } else {
        format!("{base}/{rest}")
    }
}

impl Client {
    /// `GET /v1/vms`
    pub async fn list_vms(&self) -> Result<Vec<Vm>, ClientError> {
        self.get("/v1/vms").await
    }

    /// `GET /v1/vms/{name}`
    pub async fn get_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.get(&vm_path(name, "")).await
    }

    /// `POST /v1/vms`
    pub async fn create_vm(
        &self,
        req: &CreateVmRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait("/v1/vms".to_string(), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `PATCH /v1/vms/{name}`
    pub async fn edit_vm(
        &self,
        name: &str,
        req: &EditVmRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(name, ""), wait);
        self.mutate(Method::PATCH, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/vms/{name}?force=`
    pub async fn delete_vm(
        &self,
        name: &str,
        force: bool,
        wait: bool,
    ) -> Result<Outcome<Operation>, ClientError> {
        let path = with_wait(format!("{}?force={force}", vm_path(name, "")), wait);
        self.mutate(Method::DELETE, &path, None).await
    }

    /// `POST /v1/vms/{name}/{start|stop|kill|reboot|pause|resume}`
    pub async fn vm_action(
        &self,
        name: &str,
        action: &VmAction,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(name, action.verb()), wait);
        self.mutate(Method::POST, &path, action.body()).await
    }

    /// `POST /v1/vms/{name}/disks`
    pub async fn attach_disk(
        &self,
        vm: &str,
        req: &AttachDiskRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(vm, "disks"), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/vms/{name}/disks/{pool}/{volume}`
    pub async fn detach_disk(
        &self,
        vm: &str,
        pool: &str,
        volume: &str,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let disk = item_path(&item_path(&vm_path(vm, "disks"), pool), volume);
        self.mutate(Method::DELETE, &with_wait(disk, wait), None)
            .await
    }

    /// `GET /v1/vms/{name}/snapshots`
    pub async fn list_snapshots(&self, vm: &str) -> Result<Vec<Snapshot>, ClientError> {
        self.get(&vm_path(vm, "snapshots")).await
    }

    /// `POST /v1/vms/{name}/snapshots`
    pub async fn create_snapshot(
        &self,
        vm: &str,
        req: &CreateSnapshotRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(vm, "snapshots"), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `POST /v1/vms/{name}/snapshots/{snapshot}/revert`
    pub async fn revert_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = format!("{}/revert", snapshot_path(vm, snapshot));
        self.mutate(Method::POST, &with_wait(path, wait), None)
            .await
    }

    /// `DELETE /v1/vms/{name}/snapshots/{snapshot}`
    pub async fn delete_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(snapshot_path(vm, snapshot), wait);
        self.mutate(Method::DELETE, &path, None).await
    }

    /// `GET /v1/vms/{name}/nics`
    pub async fn list_nics(&self, vm: &str) -> Result<Vec<VmNic>, ClientError> {
        self.get(&vm_path(vm, "nics")).await
    }

    /// `POST /v1/vms/{name}/nics`
    pub async fn add_nic(
        &self,
        vm: &str,
        req: &AddNicRequest,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(vm_path(vm, "nics"), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/vms/{name}/nics/{nic}`
    pub async fn remove_nic(
        &self,
        vm: &str,
        nic: &str,
        wait: bool,
    ) -> Result<Outcome<Vm>, ClientError> {
        let path = with_wait(item_path(&vm_path(vm, "nics"), nic), wait);
        self.mutate(Method::DELETE, &path, None).await
    }

    /// `GET /v1/vms/{name}/guest`
    pub async fn guest_info(&self, name: &str) -> Result<GuestInfo, ClientError> {
        self.get(&vm_path(name, "guest")).await
    }

    /// `GET /v1/vms/{name}/stats`
    pub async fn vm_stats(&self, name: &str) -> Result<vessel_metrics::VmStats, ClientError> {
        self.get(&vm_path(name, "stats")).await
    }

    /// `GET /v1/vms/{name}/console/log?follow=`: the response body, to be streamed.
    pub async fn console_log(&self, name: &str, follow: bool) -> Result<Incoming, ClientError> {
        let path = format!("{}?follow={follow}", vm_path(name, "console/log"));
        let response = self
            .open_stream(self.request(Method::GET, &path, None))
            .await?;
        Ok(response.into_body())
    }

    /// `GET /v1/vms/{name}/console` upgraded to a raw byte stream with the serial console.
    pub async fn console_attach(
        &self,
        name: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let mut request = self.request(Method::GET, &vm_path(name, "console"), None);
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::UPGRADE,
            HeaderValue::from_static(CONSOLE_UPGRADE_PROTOCOL),
        );
        let response = self.send(request).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            if response.status().is_success() {
                return Err(self.protocol(format!(
                    "the console route answered {} instead of switching protocols",
                    response.status()
                )));
            }
            return Err(self.read_error(response).await);
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|source| self.connection(source))?;
        Ok(TokioIo::new(upgraded))
    }
}

/// `/v1/vms/{vm}/snapshots/{snapshot}`
fn snapshot_path(vm: &str, snapshot: &str) -> String {
    item_path(&vm_path(vm, "snapshots"), snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_paths_encode_each_name_as_one_segment() {
        assert_eq!(vm_path("web1", "console/log"), "/v1/vms/web1/console/log");
        assert_eq!(
            snapshot_path("web 1", "before/upgrade"),
            "/v1/vms/web%201/snapshots/before%2Fupgrade"
        );
        let disk = item_path(&item_path(&vm_path("a", "disks"), "p"), "v");
        assert_eq!(disk, "/v1/vms/a/disks/p/v");
    }

    #[test]
    fn reboot_and_stop_carry_their_bodies() {
        let stop = VmAction::Stop(StopVmRequest {
            force: true,
            timeout_secs: Some(5),
        });
        assert_eq!(
            String::from_utf8(stop.body().unwrap()).unwrap(),
            r#"{"force":true,"timeout_secs":5}"#
        );
        assert_eq!(
            String::from_utf8(VmAction::Reboot { force: false }.body().unwrap()).unwrap(),
            r#"{"force":false}"#
        );
        assert!(VmAction::Start.body().is_none());
    }
}
