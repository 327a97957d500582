//! Console routes: the log (optionally followed) and interactive attach over an HTTP upgrade.

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use vessel_api::ApiError;

use crate::api::{plain_text, HttpError, Params};
use crate::ctx::Service;

/// How long output keeps flowing to a client that closed its input, after the last output.
const DRAIN_AFTER_INPUT_CLOSED: std::time::Duration = std::time::Duration::from_secs(2);
/// How long input still in flight is read after the output side ended (client or console gone).
const INPUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The protocol name of the console upgrade (`Upgrade: vessel-console`).
pub const CONSOLE_PROTOCOL: &str = "vessel-console";

/// Chunks from a broadcast subscription until it closes; a subscriber that falls behind says so
/// in the stream instead of silently missing output.
fn follow_stream(
    rx: broadcast::Receiver<Bytes>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(chunk) => Some((Ok(chunk), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some((
                Ok(Bytes::from(format!(
                    "\r\n[vessel: {n} console chunks skipped: reader too slow]\r\n"
                ))),
                rx,
            )),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

#[utoipa::path(get, path = "/v1/vms/{name}/console/log",
    params(("follow" = Option<bool>, Query, description = "keep streaming new output")),
    responses((status = 200, description = "console output (text/plain)", content_type = "text/plain")))]
pub async fn console_log(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, HttpError> {
    let follow = Params::parse(q, &["follow"])?.flag("follow", false)?;
    s.get_vm(&name).await?;
    let hub = s.ctx.console(&name);
    let (logged, rx) = hub.snapshot_and_subscribe();
    let head = stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(logged)) });
    if follow {
        Ok(plain_text(Body::from_stream(head.chain(follow_stream(rx)))))
    } else {
        Ok(plain_text(Body::from_stream(head)))
    }
}

#[utoipa::path(get, path = "/v1/vms/{name}/console",
    responses((status = 101, description = "switches to a raw byte stream with the serial console (Upgrade: vessel-console)"),
              (status = 409, body = vessel_api::ErrorBody)))]
pub async fn console_attach(
    State(s): State<Service>,
    Path(name): Path<String>,
    mut req: Request,
) -> Result<Response, HttpError> {
    let vm = s.get_vm(&name).await?;
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(CONSOLE_PROTOCOL));
    if !wants_upgrade {
        return Err(HttpError(
            ApiError::invalid(format!(
            "the console needs an HTTP upgrade (Connection: Upgrade, Upgrade: {CONSOLE_PROTOCOL})"
        ))
            .with_hint("use `vessel vm console NAME`"),
        ));
    }
    let hub = s.ctx.console(&name);
    if !hub.is_connected() {
        return Err(HttpError(
            ApiError::conflict(format!(
                "VM {name:?} is {}; its console is not live",
                vm.state.as_str()
            ))
            .with_hint("start the VM, or read the log with `vessel vm log NAME`"),
        ));
    }
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| HttpError(ApiError::internal("this connection cannot be upgraded")))?;
    // Over TLS, the session holds a stream slot of its identity until it ends.
    let slot = req
        .extensions_mut()
        .remove::<std::sync::Arc<crate::access::limits::StreamSlot>>();
    tokio::spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::warn!(error = %e, "console upgrade failed"),
        };
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let (_, mut rx) = hub.snapshot_and_subscribe();
        // The client may half-close (stdin was a pipe that ended): its last command's output
        // still has to reach it, so output keeps flowing until the console has been quiet for
        // a moment, or the client goes away.
        let input_done = tokio::sync::Notify::new();
        let to_client = async {
            let mut input_closed = false;
            loop {
                let next = if input_closed {
                    match tokio::time::timeout(DRAIN_AFTER_INPUT_CLOSED, rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        next = rx.recv() => next,
                        _ = input_done.notified() => { input_closed = true; continue; }
                    }
                };
                match next {
                    Ok(chunk) => {
                        if writer.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            let _ = writer.shutdown().await;
        };
        let from_client = async {
            let mut buf = vec![0u8; 4096];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !hub.send_input(Bytes::copy_from_slice(&buf[..n])) {
                            break;
                        }
                    }
                }
            }
            input_done.notify_one();
        };
        // Input that reached us is delivered even when the client is already gone (it typed a
        // command and closed): a failed write towards it must not drop what it sent.
        tokio::pin!(to_client, from_client);
        tokio::select! {
            _ = &mut from_client => to_client.await,
            _ = &mut to_client => {
                let _ = tokio::time::timeout(INPUT_GRACE, from_client).await;
            }
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(CONSOLE_PROTOCOL));
    Ok(response)
}
