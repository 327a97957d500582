//! Client calls of identities, tokens, projects and the audit log (`/v1/whoami`, `/v1/users`,
//! `/v1/tokens`, `/v1/projects`, `/v1/audit`).

use hyper::Method;
use vessel_api::{
    AuditRecord, AuditVerifyReport, CreateProjectRequest, CreateTokenRequest, CreateUserRequest,
    CreatedToken, IssueCertRequest, IssuedCert, Project, Quota, TokenInfo, User, Whoami,
};

use super::{encode_segment, item_path, to_json, with_query, Client, ClientError};

/// Filters of `GET /v1/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since_ms: Option<u64>,
    pub identity: Option<String>,
    pub action: Option<String>,
    pub limit: Option<usize>,
}

impl AuditQuery {
    fn path(&self) -> String {
        let mut params = Vec::new();
        if let Some(since) = self.since_ms {
            params.push(format!("since={since}"));
        }
        if let Some(identity) = &self.identity {
            params.push(format!("identity={}", encode_segment(identity)));
        }
        if let Some(action) = &self.action {
            params.push(format!("action={}", encode_segment(action)));
        }
        if let Some(limit) = self.limit {
            params.push(format!("limit={limit}"));
        }
        with_query("/v1/audit", &params)
    }
}

impl Client {
    /// `GET /v1/whoami`
    pub async fn whoami(&self) -> Result<Whoami, ClientError> {
        self.get("/v1/whoami").await
    }

    /// `GET /v1/users`
    pub async fn list_users(&self) -> Result<Vec<User>, ClientError> {
        self.get("/v1/users").await
    }

    /// `GET /v1/users/{name}`
    pub async fn get_user(&self, name: &str) -> Result<User, ClientError> {
        self.get(&item_path("/v1/users", name)).await
    }

    /// `POST /v1/users`
    pub async fn create_user(&self, req: &CreateUserRequest) -> Result<User, ClientError> {
        self.call(Method::POST, "/v1/users", Some(to_json(req)))
            .await
    }

    /// `DELETE /v1/users/{name}`
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_answer(Method::DELETE, &item_path("/v1/users", name))
            .await
    }

    /// `POST /v1/users/{name}/certs`
    pub async fn issue_cert(
        &self,
        name: &str,
        days: Option<u32>,
    ) -> Result<IssuedCert, ClientError> {
        let path = format!("{}/certs", item_path("/v1/users", name));
        let body = to_json(&IssueCertRequest { days });
        self.call(Method::POST, &path, Some(body)).await
    }

    /// `GET /v1/tokens`
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.get("/v1/tokens").await
    }

    /// `POST /v1/tokens`
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<CreatedToken, ClientError> {
        self.call(Method::POST, "/v1/tokens", Some(to_json(req)))
            .await
    }

    /// `DELETE /v1/tokens/{id}`
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.call_ignoring_answer(Method::DELETE, &item_path("/v1/tokens", id))
            .await
    }

    /// `GET /v1/projects`
    pub async fn list_projects(&self) -> Result<Vec<Project>, ClientError> {
        self.get("/v1/projects").await
    }

    /// `GET /v1/projects/{name}`
    pub async fn get_project(&self, name: &str) -> Result<Project, ClientError> {
        self.get(&item_path("/v1/projects", name)).await
    }

    /// `POST /v1/projects`
    pub async fn create_project(&self, req: &CreateProjectRequest) -> Result<Project, ClientError> {
        self.call(Method::POST, "/v1/projects", Some(to_json(req)))
            .await
    }

    /// `PUT /v1/projects/{name}/quota`
    pub async fn set_quota(&self, name: &str, quota: &Quota) -> Result<Project, ClientError> {
        let path = format!("{}/quota", item_path("/v1/projects", name));
        self.call(Method::PUT, &path, Some(to_json(quota))).await
    }

    /// `DELETE /v1/projects/{name}`
    pub async fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.call_ignoring_answer(Method::DELETE, &item_path("/v1/projects", name))
            .await
    }

    /// `GET /v1/audit`
    pub async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, ClientError> {
        self.get(&query.path()).await
    }

    /// `GET /v1/audit/verify`
    pub async fn verify_audit(&self) -> Result<AuditVerifyReport, ClientError> {
        self.get("/v1/audit/verify").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_filters_become_query_parameters() {
        assert_eq!(AuditQuery::default().path(), "/v1/audit");
        let q = AuditQuery {
            since_ms: Some(5),
            identity: Some("alice".into()),
            action: Some("vms.".into()),
            limit: None,
        };
        assert_eq!(q.path(), "/v1/audit?since=5&identity=alice&action=vms.");
    }
}
