//! Client calls for networks and VM NICs.

use hyper::Method;
use vessel_api::{AddNicRequest, CreateNetworkRequest, Network, UpdateNetworkRequest, Vm, VmNic};

use super::{encode_segment, to_json, vm_path, with_wait, Client, ClientError, Outcome};

fn network_path(name: &str) -> String {
    format!("/v1/networks/{}", encode_segment(name))
}

impl Client {
    /// `GET /v1/networks`
    pub async fn list_networks(&self) -> Result<Vec<Network>, ClientError> {
        self.get("/v1/networks").await
    }

    /// `GET /v1/networks/{name}`
    pub async fn get_network(&self, name: &str) -> Result<Network, ClientError> {
        self.get(&network_path(name)).await
    }

    /// `POST /v1/networks`
    pub async fn create_network(&self, req: &CreateNetworkRequest) -> Result<Network, ClientError> {
        let (status, body) = self
            .exchange(Method::POST, "/v1/networks", Some(to_json(req)))
            .await?;
        self.decode(status, &body)
    }

    /// `PATCH /v1/networks/{name}`
    pub async fn update_network(
        &self,
        name: &str,
        req: &UpdateNetworkRequest,
    ) -> Result<Network, ClientError> {
        let (status, body) = self
            .exchange(Method::PATCH, &network_path(name), Some(to_json(req)))
            .await?;
        self.decode(status, &body)
    }

    /// `DELETE /v1/networks/{name}`
    pub async fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.exchange(Method::DELETE, &network_path(name), None)
            .await?;
        Ok(())
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
        let path = with_wait(
            format!("{}/{}", vm_path(vm, "nics"), encode_segment(nic)),
            wait,
        );
        self.mutate(Method::DELETE, &path, None).await
    }
}
