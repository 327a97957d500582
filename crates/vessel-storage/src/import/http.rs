//! Downloads over HTTP(S) into the copy pipeline.
//!
//! rustls with the Mozilla root certificates (webpki-roots), so downloads do not depend on the
//! host's certificate store or OpenSSL. Connect timeout [`CONNECT_TIMEOUT`], at most
//! [`MAX_REDIRECTS`] redirects, and a stall timeout: no byte (or no response) for that long fails
//! the download. Only status 200 is accepted. No `Accept-Encoding` is sent, so the bytes hashed
//! are the bytes of the file on the server.

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::address::UrlPolicy;

use super::copy::{Feed, FeedError, BUF_SIZE};
use super::{CONNECT_TIMEOUT, MAX_REDIRECTS};

/// How often a download reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
use crate::pool::PoolError;

/// A download whose response headers have arrived.
pub(crate) struct Download {
    url: String,
    response: reqwest::Response,
    /// Content-Length, if the server sent one.
    pub(crate) total: Option<u64>,
}

/// Checks that `url` is an `http(s)://` URL.
pub(crate) fn check_url(url: &str) -> Result<reqwest::Url, PoolError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        PoolError::InvalidRequest(format!(
            "{url:?} is not a valid URL ({e}); give an http:// or https:// URL or a file path"
        ))
    })?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(parsed),
        "http" | "https" => Err(PoolError::InvalidRequest(format!(
            "URL {url:?} has no host"
        ))),
        other => Err(PoolError::InvalidRequest(format!(
            "cannot import from a {other}:// URL ({url}); only http:// and https:// URLs can be \
             downloaded (for a file on the daemon's host, give its path)"
        ))),
    }
}

/// The literal address of a URL's host, if it is one (`http://[::1]/`, `http://10.0.0.1/`).
fn literal_address(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Checks a URL's scheme and, for a literal address, the address (host names are checked by
/// [`CheckedResolver`] when they are resolved).
fn check_hop(url: &reqwest::Url, policy: &UrlPolicy) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "it redirected to a {}:// URL; only http:// and https:// are followed",
            url.scheme()
        ));
    }
    match literal_address(url) {
        Some(ip) => policy.check(ip),
        None => Ok(()),
    }
}

/// Checks a URL before any download starts: its scheme, and its address when the host is a
/// literal one (host names are checked when they are resolved, redirects at each hop).
pub fn precheck_url(url: &str, policy: &UrlPolicy) -> Result<(), PoolError> {
    let parsed = check_url(url)?;
    check_hop(&parsed, policy)
        .map_err(|why| PoolError::InvalidRequest(format!("cannot import {url}: {why}")))
}

/// Resolves host names and refuses the whole name if any of its addresses is not allowed (a
/// name that mixes public and internal addresses is a rebinding attempt). The client connects
/// only to the addresses returned here, so what was checked is what is reached.
struct CheckedResolver(UrlPolicy);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy
                    .check(addr.ip())
                    .map_err(|why| format!("{host} resolves to {why}"))?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Sends the request and waits for the response headers (at most `stall`). Every address
/// connected to, redirects included, passes `policy`.
pub(crate) async fn open(
    url: &str,
    stall: Duration,
    policy: &UrlPolicy,
) -> Result<Download, PoolError> {
    let parsed = check_url(url)?;
    check_hop(&parsed, policy).map_err(|why| failed(url, why))?;
    let hops = policy.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!(
                "it redirected more than {MAX_REDIRECTS} times; give the final URL"
            ));
        }
        match check_hop(attempt.url(), &hops) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    });
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(redirects)
        // A proxy from the environment would make the check meaningless: connect directly.
        .no_proxy()
        .user_agent(concat!("vessel/", env!("CARGO_PKG_VERSION")));
    if !policy.is_anywhere() {
        builder = builder.dns_resolver(std::sync::Arc::new(CheckedResolver(policy.clone())));
    }
    let client = builder.build().map_err(|e| {
        failed(
            url,
            format!("the HTTP client could not start: {}", chain(&e)),
        )
    })?;
    let response = match tokio::time::timeout(stall, client.get(parsed).send()).await {
        Err(_) => {
            return Err(failed(
                url,
                format!(
                    "the server sent no response in {} s; check that it is up, or try again",
                    stall.as_secs()
                ),
            ))
        }
        Ok(Err(e)) => return Err(failed(url, request_error(&e))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let hint = match status.as_u16() {
            401 | 403 => "the server refused access; use a URL that needs no login",
            404 | 410 => "there is no file at that URL; check the URL",
            500..=599 => "the server failed; try again later",
            _ => "the server did not send the file",
        };
        return Err(failed(
            url,
            format!("the server answered HTTP {status}; {hint}"),
        ));
    }
    let total = response.content_length();
    Ok(Download {
        url: url.to_string(),
        response,
        total,
    })
}

impl Download {
    /// Streams the body into `feed`; the result is the number of bytes received. `progress` gets
    /// the bytes received so far, about ten times a second while they grow. Fails when no byte
    /// arrives for `stall`.
    pub(crate) async fn copy_into(
        mut self,
        feed: &mut Feed,
        stall: Duration,
        max_bytes: Option<u64>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, FeedError> {
        let mut done = 0u64;
        let mut reported = 0u64;
        let mut buf = feed.buffer().await.ok_or(FeedError::SinkGone)?;
        let mut len = 0usize;
        let mut last_data = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        loop {
            // `chunk` only awaits the body's next frame, so dropping it for a tick loses nothing.
            let bytes = tokio::select! {
                next = self.response.chunk() => match next {
                    Err(e) => return Err(FeedError::Source(self.cut(done, &chain(&e)))),
                    Ok(None) => break,
                    Ok(Some(bytes)) => bytes,
                },
                () = tokio::time::sleep_until(last_data + stall) => {
                    return Err(FeedError::Source(self.cut(
                        done,
                        &format!("no data for {} s", stall.as_secs()),
                    )))
                }
                _ = ticker.tick() => {
                    if done != reported {
                        progress(done);
                        reported = done;
                    }
                    continue;
                }
            };
            last_data = tokio::time::Instant::now();
            done += bytes.len() as u64;
            if let Some(limit) = max_bytes.filter(|limit| done > *limit) {
                return Err(FeedError::TooLarge { limit });
            }
            let mut data = &bytes[..];
            while !data.is_empty() {
                let n = (BUF_SIZE - len).min(data.len());
                buf[len..len + n].copy_from_slice(&data[..n]);
                len += n;
                data = &data[n..];
                if len == BUF_SIZE {
                    if !feed.send(buf, len).await {
                        return Err(FeedError::SinkGone);
                    }
                    buf = feed.buffer().await.ok_or(FeedError::SinkGone)?;
                    len = 0;
                }
            }
        }
        if let Some(total) = self.total.filter(|total| done < *total) {
            return Err(FeedError::Source(format!(
                "download of {} ended after {done} of {total} bytes; the connection was closed \
                 early: try again",
                self.url
            )));
        }
        if len > 0 && !feed.send(buf, len).await {
            return Err(FeedError::SinkGone);
        }
        progress(done);
        Ok(done)
    }

    /// The message for a body that stopped coming after `done` bytes.
    fn cut(&self, done: u64, why: &str) -> String {
        match self.total {
            Some(total) => format!(
                "download of {} ended after {done} of {total} bytes ({why}); try again",
                self.url
            ),
            None => format!(
                "download of {} failed after {done} bytes ({why}); try again",
                self.url
            ),
        }
    }
}

fn failed(url: &str, why: String) -> PoolError {
    PoolError::InvalidRequest(format!("download of {url} failed: {why}"))
}

fn request_error(e: &reqwest::Error) -> String {
    if e.is_redirect() {
        // The redirect policy's own reason (too many hops, or a refused address).
        match e.source() {
            Some(why) => format!("redirect refused: {why}"),
            None => format!("it redirected more than {MAX_REDIRECTS} times; give the final URL"),
        }
    } else if e.is_connect() && e.is_timeout() {
        format!(
            "could not connect within {} s; check the host name and the network",
            CONNECT_TIMEOUT.as_secs()
        )
    } else if e.is_connect() {
        format!("could not connect: {}", chain(e))
    } else {
        chain(e)
    }
}

/// An error with its causes, `a: b: c` (reqwest's own message alone is terse).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_are_downloaded() {
        assert!(check_url("https://example.com/disk.qcow2").is_ok());
        assert!(check_url("http://127.0.0.1:8080/d.raw").is_ok());
        for (url, says) in [
            ("file:///etc/shadow", "file://"),
            ("ftp://example.com/x.img", "ftp://"),
            ("example.com/x.img", "not a valid URL"),
        ] {
            let err = check_url(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
