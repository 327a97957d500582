//! Client calls of networks (`/v1/networks`). A VM's NICs are VM routes: see `vm.rs`.

use hyper::Method;
use vessel_api::{CreateNetworkRequest, Network, UpdateNetworkRequest};

use super::{item_path, to_json, Client, ClientError};

fn network_path(name: &str) -> String {
    item_path("/v1/networks", name)
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
        self.call(Method::POST, "/v1/networks", Some(to_json(req)))
            .await
    }

    /// `PATCH /v1/networks/{name}`
    pub async fn update_network(
        &self,
        name: &str,
        req: &UpdateNetworkRequest,
    ) -> Result<Network, ClientError> {
        self.call(Method::PATCH, &network_path(name), Some(to_json(req)))
            .await
    }

    /// `DELETE /v1/networks/{name}`
    pub async fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_answer(Method::DELETE, &network_path(name))
            .await
    }
}
