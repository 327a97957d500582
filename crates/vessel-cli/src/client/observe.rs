//! Client calls that watch the daemon: operations (`/v1/operations`), events (`/v1/events`,
//! also as a live stream), statistics and metrics, the host (`/v1/host`).

use std::path::PathBuf;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use serde::Serialize;
use vessel_api::{Event, EventKind, HostCheck, HostInfo, MasterKeyRotation, Operation};

use super::transport::connection_error;
use super::{encode_segment, item_path, with_query, Client, ClientError};

fn operation_path(id: &str) -> String {
    item_path("/v1/operations", id)
}

/// `/v1/events?{first}&vm=&kind=`
fn events_path(vm: Option<&str>, kinds: &[EventKind], first: String) -> String {
    let mut params = vec![first];
    if let Some(vm) = vm {
        params.push(format!("vm={}", encode_segment(vm)));
    }
    if !kinds.is_empty() {
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        params.push(format!("kind={}", names.join(",")));
    }
    with_query("/v1/events", &params)
}

impl Client {
    /// `GET /v1/operations`
    pub async fn list_operations(&self) -> Result<Vec<Operation>, ClientError> {
        self.get("/v1/operations").await
    }

    /// `GET /v1/operations/{id}`
    pub async fn get_operation(&self, id: &str) -> Result<Operation, ClientError> {
        self.get(&operation_path(id)).await
    }

    /// `POST /v1/operations/{id}/cancel`
    pub async fn cancel_operation(&self, id: &str) -> Result<Operation, ClientError> {
        let path = format!("{}/cancel", operation_path(id));
        self.call(Method::POST, &path, None).await
    }

    /// `GET /v1/events?vm=&limit=`
    pub async fn list_events(
        &self,
        vm: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, ClientError> {
        self.list_events_of(vm, &[], limit).await
    }

    /// `GET /v1/events?vm=&kind=&limit=`
    pub async fn list_events_of(
        &self,
        vm: Option<&str>,
        kinds: &[EventKind],
        limit: usize,
    ) -> Result<Vec<Event>, ClientError> {
        self.get(&events_path(vm, kinds, format!("limit={limit}")))
            .await
    }

    /// `GET /v1/events?follow=true`: a server-sent-event stream; read it with [`EventStream`].
    pub async fn follow_events(
        &self,
        vm: Option<&str>,
        kinds: &[EventKind],
    ) -> Result<EventStream, ClientError> {
        let path = events_path(vm, kinds, "follow=true".into());
        let response = self
            .open_stream(self.request(Method::GET, &path, None))
            .await?;
        Ok(EventStream {
            body: response.into_body(),
            buffer: Vec::new(),
            socket: self.socket.clone(),
        })
    }

    /// `GET /v1/host/stats`
    pub async fn host_stats(&self) -> Result<vessel_metrics::HostStats, ClientError> {
        self.get("/v1/host/stats").await
    }

    /// `GET /v1/stats`: the latest sampling round of the host and every VM.
    pub async fn all_stats(&self) -> Result<StatsRound, ClientError> {
        self.get("/v1/stats").await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let (_, body) = self.exchange(Method::GET, "/metrics", None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /v1/host`
    pub async fn host_info(&self) -> Result<HostInfo, ClientError> {
        self.get("/v1/host").await
    }

    /// `GET /v1/host/check`
    pub async fn host_check(&self) -> Result<HostCheck, ClientError> {
        self.get("/v1/host/check").await
    }

    /// `POST /v1/host/master-key/rotate`
    pub async fn rotate_master_key(&self) -> Result<MasterKeyRotation, ClientError> {
        self.call(Method::POST, "/v1/host/master-key/rotate", None)
            .await
    }
}

/// One sampling round, as `GET /v1/stats` returns it.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct StatsRound {
    pub host: vessel_metrics::HostStats,
    pub vms: Vec<vessel_metrics::VmStats>,
}

/// The events of a `follow_events` stream, one at a time.
pub struct EventStream {
    body: Incoming,
    buffer: Vec<u8>,
    socket: PathBuf,
}

impl EventStream {
    /// The next event, or `None` when the daemon ended the stream. Keep-alive comments and
    /// malformed records are skipped.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(record) = self.take_record() {
                if let Some(event) = parse_record(&record) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    let frame = frame.map_err(|source| connection_error(&self.socket, source))?;
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The first complete record in the buffer (records end with a blank line), taken out.
    fn take_record(&mut self) -> Option<Vec<u8>> {
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        Some(self.buffer.drain(..end + 2).collect())
    }
}

/// The event in one server-sent-event record: its `data:` lines joined.
fn parse_record(record: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(record);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str::<Event>(&data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters_become_query_parameters() {
        assert_eq!(
            events_path(None, &[], "limit=5".into()),
            "/v1/events?limit=5"
        );
        assert_eq!(
            events_path(
                Some("web 1"),
                &[EventKind::State, EventKind::Alert],
                "follow=true".into()
            ),
            "/v1/events?follow=true&vm=web%201&kind=state,alert"
        );
    }
}
