//! Client calls of storage: pools (`/v1/pools`), the volumes in them, images (`/v1/images`).

use hyper::Method;
use vessel_api::{
    CloneVolumeRequest, CreatePoolRequest, CreateVolumeRequest, ExportVolumeRequest,
    ExportedVolume, Image, ImportImageRequest, ImportVolumeRequest, Pool, ResizeVolumeRequest,
    Volume,
};

use super::{item_path, to_json, with_wait, Client, ClientError, Outcome};

fn pool_path(pool: &str) -> String {
    item_path("/v1/pools", pool)
}

fn volumes_path(pool: &str) -> String {
    format!("{}/volumes", pool_path(pool))
}

/// `/v1/pools/{pool}/volumes/{name}`
fn volume_path(pool: &str, name: &str) -> String {
    item_path(&volumes_path(pool), name)
}

fn image_path(name: &str) -> String {
    item_path("/v1/images", name)
}

impl Client {
    /// `GET /v1/pools`
    pub async fn list_pools(&self) -> Result<Vec<Pool>, ClientError> {
        self.get("/v1/pools").await
    }

    /// `GET /v1/pools/{name}`
    pub async fn get_pool(&self, name: &str) -> Result<Pool, ClientError> {
        self.get(&pool_path(name)).await
    }

    /// `POST /v1/pools`
    pub async fn create_pool(&self, req: &CreatePoolRequest) -> Result<Pool, ClientError> {
        self.call(Method::POST, "/v1/pools", Some(to_json(req)))
            .await
    }

    /// `DELETE /v1/pools/{name}`
    pub async fn delete_pool(&self, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_answer(Method::DELETE, &pool_path(name))
            .await
    }

    /// `GET /v1/pools/{pool}/volumes`
    pub async fn list_volumes(&self, pool: &str) -> Result<Vec<Volume>, ClientError> {
        self.get(&volumes_path(pool)).await
    }

    /// `GET /v1/pools/{pool}/volumes/{name}`
    pub async fn get_volume(&self, pool: &str, name: &str) -> Result<Volume, ClientError> {
        self.get(&volume_path(pool, name)).await
    }

    /// `POST /v1/pools/{pool}/volumes`
    pub async fn create_volume(
        &self,
        pool: &str,
        req: &CreateVolumeRequest,
    ) -> Result<Volume, ClientError> {
        self.call(Method::POST, &volumes_path(pool), Some(to_json(req)))
            .await
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/resize`
    pub async fn resize_volume(
        &self,
        pool: &str,
        name: &str,
        req: &ResizeVolumeRequest,
    ) -> Result<Volume, ClientError> {
        let path = format!("{}/resize", volume_path(pool, name));
        self.call(Method::POST, &path, Some(to_json(req))).await
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/clone`
    pub async fn clone_volume(
        &self,
        pool: &str,
        name: &str,
        req: &CloneVolumeRequest,
    ) -> Result<Volume, ClientError> {
        let path = format!("{}/clone", volume_path(pool, name));
        self.call(Method::POST, &path, Some(to_json(req))).await
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/clone?wait=false`: the copy's operation.
    pub async fn start_clone_volume(
        &self,
        pool: &str,
        name: &str,
        req: &CloneVolumeRequest,
    ) -> Result<Outcome<Volume>, ClientError> {
        let path = with_wait(format!("{}/clone", volume_path(pool, name)), false);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/pools/{pool}/volumes/{name}`
    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_answer(Method::DELETE, &volume_path(pool, name))
            .await
    }

    /// `POST /v1/pools/{pool}/imports`
    pub async fn import_volume(
        &self,
        pool: &str,
        req: &ImportVolumeRequest,
        wait: bool,
    ) -> Result<Outcome<Volume>, ClientError> {
        let path = with_wait(format!("{}/imports", pool_path(pool)), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `POST /v1/pools/{pool}/volumes/{name}/export`
    pub async fn export_volume(
        &self,
        pool: &str,
        name: &str,
        req: &ExportVolumeRequest,
        wait: bool,
    ) -> Result<Outcome<ExportedVolume>, ClientError> {
        let path = with_wait(format!("{}/export", volume_path(pool, name)), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `GET /v1/images`
    pub async fn list_images(&self) -> Result<Vec<Image>, ClientError> {
        self.get("/v1/images").await
    }

    /// `GET /v1/images/{name}`
    pub async fn get_image(&self, name: &str) -> Result<Image, ClientError> {
        self.get(&image_path(name)).await
    }

    /// `POST /v1/images`: the import's outcome (the image, or the operation with `wait=false`).
    pub async fn import_image(
        &self,
        req: &ImportImageRequest,
        wait: bool,
    ) -> Result<Outcome<Image>, ClientError> {
        let path = with_wait("/v1/images".to_string(), wait);
        self.mutate(Method::POST, &path, Some(to_json(req))).await
    }

    /// `DELETE /v1/images/{name}`
    pub async fn delete_image(&self, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_answer(Method::DELETE, &image_path(name))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_paths_nest_under_their_pool() {
        assert_eq!(volume_path("fast", "a b"), "/v1/pools/fast/volumes/a%20b");
        assert_eq!(
            with_wait(format!("{}/clone", volume_path("p", "v")), false),
            "/v1/pools/p/volumes/v/clone?wait=false"
        );
    }
}
