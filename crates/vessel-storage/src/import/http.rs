//! Downloads over HTTP(S) into the copy pipeline.
//!
//! rustls with the Mozilla root certificates (webpki-roots), so downloads do not depend on the
//! host's certificate store or OpenSSL. Connect timeout [`CONNECT_TIMEOUT`], at most
//! [`MAX_REDIRECTS`] redirects, and a stall timeout: no byte (or no response) for that long fails
//! the download. Only status 200 is accepted. No `Accept-Encoding` is sent, so the bytes hashed
//! are the bytes of the file on the server.

use std::error::Error as _;
use std::time::Duration;

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

/// Sends the request and waits for the response headers (at most `stall`).
pub(crate) async fn open(url: &str, stall: Duration) -> Result<Download, PoolError> {
    let parsed = check_url(url)?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(concat!("vessel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
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
        format!("it redirected more than {MAX_REDIRECTS} times; give the final URL")
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
