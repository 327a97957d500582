//! `GET /v1/events`: the recorded events as a list, or, with `follow=true`, everything that
//! happens from now on as a server-sent-event stream (state changes, operations, alerts).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use vessel_api::{ApiError, Event, EventKind};
use vessel_auth::Permission;

use crate::access::caller::Caller;
use crate::api::{ApiResult, HttpError, Params};
use crate::ctx::Service;
use crate::vm::model::now_ms;

/// Which events a caller may see: those of the projects it may read events in (`None`: all).
/// Every event carries the project of what it is about, fixed when it happened (a VM's, an
/// operation's, a network's), so a VM name reused in another project does not bring the old
/// VM's events along, and a host operation of one project is never shown to another. An event
/// without a project (recorded before events had one) is shown only to callers who see every
/// project; a `lagged` notice is the stream's own and always passes.
#[derive(Clone)]
struct Visibility(vessel_auth::Visibility);

impl Visibility {
    fn of(caller: &Caller) -> Visibility {
        Visibility(vessel_auth::Visibility::of(
            &caller.identity,
            Permission::EventRead,
        ))
    }

    fn allows(&self, event: &Event) -> bool {
        event.kind == EventKind::Lagged
            || match &event.project {
                Some(project) => self.0.shows(project),
                None => self.0.shows_all(),
            }
    }
}

/// Which events a client wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub vm: Option<String>,
    pub kinds: Vec<EventKind>,
}

impl EventFilter {
    fn parse(params: &Params) -> Result<EventFilter, HttpError> {
        let vm = params.0.get("vm").cloned();
        if let Some(vm) = &vm {
            vessel_core::validate_name("VM", vm).map_err(|e| HttpError(ApiError::invalid(e)))?;
        }
        let mut kinds = Vec::new();
        if let Some(list) = params.0.get("kind") {
            for name in list.split(',').filter(|n| !n.is_empty()) {
                let kind = [
                    EventKind::Info,
                    EventKind::State,
                    EventKind::Operation,
                    EventKind::Alert,
                ]
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| {
                    HttpError(ApiError::invalid(format!(
                        "kind={name:?} is not one of info, state, operation, alert"
                    )))
                })?;
                kinds.push(kind);
            }
        }
        Ok(EventFilter { vm, kinds })
    }

    /// Whether the event passes. A `lagged` notice always does: the client must learn of it.
    pub fn matches(&self, event: &Event) -> bool {
        if event.kind == EventKind::Lagged {
            return true;
        }
        self.vm.as_ref().is_none_or(|vm| &event.vm == vm)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

/// The events a subscriber gets, in order; when it fell behind and the bus dropped events for
/// it, a `lagged` event says how many, and the stream goes on with the newest.
pub fn subscription(
    rx: broadcast::Receiver<Event>,
    filter: EventFilter,
) -> impl Stream<Item = Event> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(event) => Some((event, rx)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let mut notice = Event::new(
                    EventKind::Lagged,
                    "",
                    format!("this stream fell behind and missed {missed} events"),
                    now_ms(),
                );
                notice.missed = Some(missed);
                Some((notice, rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .filter(move |event| std::future::ready(filter.matches(event)))
}

#[utoipa::path(get, path = "/v1/events",
    params(("vm" = Option<String>, Query, description = "only this VM's events"),
           ("kind" = Option<String>, Query, description = "only these kinds, comma-separated: info, state, operation, alert"),
           ("follow" = Option<bool>, Query, description = "stream events as they happen (text/event-stream) instead of listing recorded ones"),
           ("limit" = Option<usize>, Query, description = "newest N recorded events (default 100, at most 2000)")),
    responses((status = 200, body = Vec<vessel_api::Event>, description = "a JSON list, or with follow=true a text/event-stream of Event objects")))]
pub async fn events(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let params = Params::parse(q, &["vm", "limit", "kind", "follow"])?;
    let filter = EventFilter::parse(&params)?;
    let visibility = Visibility::of(&caller);
    if params.flag("follow", false)? {
        // The stream ends when the caller's credential does (user or token deleted, expired).
        let revoked =
            crate::access::identities::revoked(Arc::clone(&s.ctx.store), caller.credential);
        let stream = subscription(s.ctx.view.subscribe(), filter)
            .take_until(Box::pin(revoked))
            .filter(move |event| std::future::ready(visibility.allows(event)))
            .map(|event| {
                let data = serde_json::to_string(&event).expect("events serialize");
                Ok::<_, Infallible>(SseEvent::default().event(event.kind.as_str()).data(data))
            });
        let keep_alive = KeepAlive::new().interval(Duration::from_secs(15));
        return Ok(Sse::new(stream).keep_alive(keep_alive).into_response());
    }
    let limit = match params.0.get("limit") {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=2000).contains(n))
            .ok_or_else(|| {
                HttpError(ApiError::invalid(format!(
                    "limit={text:?} is not a number from 1 to 2000"
                )))
            })?,
    };
    let events = s.list_events(filter.vm.as_deref(), 2000).await?;
    let mut kept: Vec<Event> = events
        .into_iter()
        .filter(|e| filter.matches(e) && visibility.allows(e))
        .collect();
    let excess = kept.len().saturating_sub(limit);
    kept.drain(..excess);
    Ok(Json(kept).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(vm: &str, kind: EventKind) -> Event {
        Event::new(kind, vm, "x", 1)
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_how_many_it_missed_and_goes_on() {
        let (tx, rx) = broadcast::channel(4);
        let stream = subscription(rx, EventFilter::default());
        for i in 0..10 {
            tx.send(event(&format!("vm{i}"), EventKind::State)).unwrap();
        }
        drop(tx);
        let seen: Vec<Event> = stream.collect().await;
        assert_eq!(seen[0].kind, EventKind::Lagged);
        assert_eq!(seen[0].missed, Some(6));
        let names: Vec<&str> = seen[1..].iter().map(|e| e.vm.as_str()).collect();
        assert_eq!(names, ["vm6", "vm7", "vm8", "vm9"], "the newest, in order");
    }

    #[test]
    fn a_caller_sees_only_events_of_its_projects_and_lags() {
        let caller = |grants| Caller {
            identity: vessel_auth::Identity {
                name: "alice".into(),
                grants,
            },
            source: "test".into(),
            method: "token",
            credential: Default::default(),
        };
        let alice = Visibility::of(&caller(vec![vessel_auth::Grant::new(
            "p1",
            vessel_auth::Role::Viewer,
        )]));
        let of = |project: Option<&str>| {
            event("web1", EventKind::Operation).in_project(project.map(str::to_string))
        };
        assert!(alice.allows(&of(Some("p1"))));
        assert!(!alice.allows(&of(Some("p2"))), "another project's");
        assert!(
            !alice.allows(&of(None)),
            "recorded before events had a project"
        );
        assert!(alice.allows(&event("", EventKind::Lagged)));
        let root = Visibility::of(&caller(vec![vessel_auth::Grant::new(
            "*",
            vessel_auth::Role::Viewer,
        )]));
        assert!(root.allows(&of(Some("p2"))) && root.allows(&of(None)));
    }

    #[tokio::test]
    async fn filters_pick_by_vm_and_kind_but_never_hide_a_lag() {
        let filter = EventFilter {
            vm: Some("web1".into()),
            kinds: vec![EventKind::State, EventKind::Alert],
        };
        assert!(filter.matches(&event("web1", EventKind::State)));
        assert!(!filter.matches(&event("web2", EventKind::State)));
        assert!(!filter.matches(&event("web1", EventKind::Operation)));
        assert!(filter.matches(&event("", EventKind::Lagged)));
    }
}
