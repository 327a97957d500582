//! The TLS listener's limits, so that no one client, address or identity can take the remote
//! API away from the others (the unix socket has none of these: it is root's, always usable).
//!
//! - **Before sign-in** (handshaking, or connected without an authenticated request yet): at
//!   most [`MAX_PENDING_PER_ADDRESS`] connections per address and [`MAX_PENDING`] in all. A new
//!   connection over either limit is not refused: the *oldest* such connection (of its address,
//!   or of all) is closed instead. Idle connections cannot fill the server, and a real client,
//!   whose handshake and first request take milliseconds, gets in past any number of them.
//!   They also time out: the handshake after 10 s, the first request's headers 10 s later.
//! - **Signed in** (a connection counts for the identity of its first authenticated request):
//!   at most [`MAX_PER_IDENTITY`] connections per identity and [`MAX_SIGNED_IN`] in all, which
//!   keeps [`MAX_PENDING`] slots free for new sign-ins. Over the limit, the request is 429.
//!   An idle kept-alive connection is closed after 10 s (hyper's header read timeout runs
//!   while it waits for the next request).
//! - **Held streams** (`?follow=true` event, log and console streams, and console sessions):
//!   at most [`MAX_STREAMS_PER_IDENTITY`] per identity; a stream ends after [`MAX_STREAM_LIFE`]
//!   (the client reconnects).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

pub const MAX_PENDING: usize = 256;
pub const MAX_PENDING_PER_ADDRESS: usize = 64;
pub const MAX_SIGNED_IN: usize = 768;
pub const MAX_PER_IDENTITY: usize = 64;
pub const MAX_STREAMS_PER_IDENTITY: usize = 16;
pub const MAX_STREAM_LIFE: Duration = Duration::from_secs(3600);

/// The counts, shared by the listener and the security middleware.
#[derive(Debug, Default)]
pub struct Limits {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Connections not signed in yet, oldest first (ids grow), with what closes them.
    pending: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    pending_per_address: HashMap<IpAddr, usize>,
    signed_in: usize,
    per_identity: HashMap<String, usize>,
    streams: HashMap<String, usize>,
}

/// One TLS connection's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub struct Connection {
    limits: Arc<Limits>,
    id: u64,
    ip: IpAddr,
    /// Notified when the connection is evicted to make room for a newer one.
    pub evicted: Arc<Notify>,
    identity: Mutex<Option<String>>,
}

/// A held stream's place in its identity's count.
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<Limits>,
    identity: String,
}

impl Limits {
    /// Counts a new connection from `ip`, closing the oldest unauthenticated one of its address
    /// (or of all) if it is over the limit.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Connection {
        let mut s = self.state.lock();
        if s.pending_per_address.get(&ip).copied().unwrap_or(0) >= MAX_PENDING_PER_ADDRESS {
            let oldest = s
                .pending
                .iter()
                .find(|(_, (a, _))| *a == ip)
                .map(|(id, _)| *id);
            s.evict(oldest);
        } else if s.pending.len() >= MAX_PENDING {
            let oldest = s.pending.keys().next().copied();
            s.evict(oldest);
        }
        s.next_id += 1;
        let id = s.next_id;
        let evicted = Arc::new(Notify::new());
        s.pending.insert(id, (ip, Arc::clone(&evicted)));
        *s.pending_per_address.entry(ip).or_default() += 1;
        Connection {
            limits: Arc::clone(self),
            id,
            ip,
            evicted,
            identity: Mutex::new(None),
        }
    }

    /// A held stream of `identity`, unless it holds its limit already.
    pub fn stream(self: &Arc<Self>, identity: &str) -> Result<StreamSlot, String> {
        let mut s = self.state.lock();
        let held = s.streams.entry(identity.to_string()).or_default();
        if *held >= MAX_STREAMS_PER_IDENTITY {
            return Err(format!(
                "{identity} holds {MAX_STREAMS_PER_IDENTITY} open streams (events, logs, consoles) already; close one first"
            ));
        }
        *held += 1;
        Ok(StreamSlot {
            limits: Arc::clone(self),
            identity: identity.to_string(),
        })
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.pending.len(), s.signed_in)
    }
}

impl State {
    fn evict(&mut self, id: Option<u64>) {
        let Some((ip, notify)) = id.and_then(|id| self.pending.remove(&id)) else {
            return;
        };
        self.forget_pending(ip);
        // notify_one stores a permit: a connection that is not waiting yet still sees it.
        notify.notify_one();
    }

    fn forget_pending(&mut self, ip: IpAddr) {
        if let Some(n) = self.pending_per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.pending_per_address.remove(&ip);
            }
        }
    }
}

impl Connection {
    /// Counts this connection for `identity` at its first authenticated request; 429's message
    /// if the identity, or the server, holds its limit of signed-in connections. A connection
    /// that was evicted meanwhile is being closed; its request still runs.
    pub fn sign_in(&self, identity: &str) -> Result<(), String> {
        let mut mine = self.identity.lock();
        if mine.is_some() {
            return Ok(());
        }
        let mut s = self.limits.state.lock();
        let held = s.per_identity.get(identity).copied().unwrap_or(0);
        if held >= MAX_PER_IDENTITY {
            return Err(format!(
                "{identity} holds {MAX_PER_IDENTITY} connections already; reuse or close them"
            ));
        }
        if s.signed_in >= MAX_SIGNED_IN {
            return Err("the server holds its limit of signed-in connections; try again".into());
        }
        if s.pending.remove(&self.id).is_some() {
            s.forget_pending(self.ip);
        }
        *s.per_identity.entry(identity.to_string()).or_default() += 1;
        s.signed_in += 1;
        *mine = Some(identity.to_string());
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let identity = self.identity.lock().take();
        let mut s = self.limits.state.lock();
        match identity {
            Some(identity) => {
                s.signed_in -= 1;
                if let Some(n) = s.per_identity.get_mut(&identity) {
                    *n -= 1;
                    if *n == 0 {
                        s.per_identity.remove(&identity);
                    }
                }
            }
            None => {
                if s.pending.remove(&self.id).is_some() {
                    s.forget_pending(self.ip);
                }
            }
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock();
        if let Some(n) = s.streams.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                s.streams.remove(&self.identity);
            }
        }
    }
}

/// A streamed response body that holds its [`StreamSlot`] while it lives and ends after
/// [`MAX_STREAM_LIFE`].
pub struct HeldStream {
    inner: axum::body::Body,
    end: std::pin::Pin<Box<tokio::time::Sleep>>,
    _slot: StreamSlot,
}

impl HeldStream {
    pub fn new(inner: axum::body::Body, slot: StreamSlot) -> Self {
        HeldStream {
            inner,
            end: Box::pin(tokio::time::sleep(MAX_STREAM_LIFE)),
            _slot: slot,
        }
    }
}

impl hyper::body::Body for HeldStream {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future as _;
        let this = self.get_mut();
        if this.end.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        std::pin::Pin::new(&mut this.inner).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_oldest_unauthenticated_connection_of_an_address_makes_room() {
        let limits = Arc::new(Limits::default());
        let idle: Vec<Connection> = (0..MAX_PENDING_PER_ADDRESS)
            .map(|_| limits.connect(ip(1)))
            .collect();
        let newcomer = limits.connect(ip(1));
        assert_eq!(limits.counts(), (MAX_PENDING_PER_ADDRESS, 0));
        // The first idle one was told to go (the permit waits for it), no other.
        let told = |c: &Connection| {
            let notified = c.evicted.notified();
            futures::FutureExt::now_or_never(notified).is_some()
        };
        assert!(told(&idle[0]));
        assert!(!told(&idle[1]));
        newcomer.sign_in("alice").unwrap();
        assert_eq!(limits.counts(), (MAX_PENDING_PER_ADDRESS - 1, 1));
        drop(idle);
        drop(newcomer);
        assert_eq!(limits.counts(), (0, 0));
    }

    #[test]
    fn many_addresses_share_the_global_pending_limit() {
        let limits = Arc::new(Limits::default());
        let all: Vec<Connection> = (0..MAX_PENDING + 10)
            .map(|i| limits.connect(IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8])))
            .collect();
        assert_eq!(limits.counts().0, MAX_PENDING);
        drop(all);
        assert_eq!(limits.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_stream_ends_after_its_lifetime_and_gives_its_slot_back() {
        use http_body_util::BodyExt as _;
        let limits = Arc::new(Limits::default());
        let never = axum::body::Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        let body = HeldStream::new(never, limits.stream("bob").unwrap());
        let started = tokio::time::Instant::now();
        let collected = body.collect().await.unwrap();
        assert!(collected.to_bytes().is_empty());
        assert_eq!(started.elapsed(), MAX_STREAM_LIFE);
        let all: Vec<StreamSlot> = (0..MAX_STREAMS_PER_IDENTITY)
            .map(|_| limits.stream("bob").unwrap())
            .collect();
        assert_eq!(all.len(), MAX_STREAMS_PER_IDENTITY);
    }

    #[test]
    fn an_identity_is_limited_in_connections_and_streams_others_are_not() {
        let limits = Arc::new(Limits::default());
        let bobs: Vec<Connection> = (0..MAX_PER_IDENTITY)
            .map(|_| {
                let c = limits.connect(ip(2));
                c.sign_in("bob").unwrap();
                c
            })
            .collect();
        let one_more = limits.connect(ip(2));
        let err = one_more.sign_in("bob").unwrap_err();
        assert!(err.contains("bob holds 64 connections"), "{err}");
        one_more.sign_in("alice").unwrap();
        let streams: Vec<StreamSlot> = (0..MAX_STREAMS_PER_IDENTITY)
            .map(|_| limits.stream("bob").unwrap())
            .collect();
        assert!(limits.stream("bob").unwrap_err().contains("open streams"));
        assert!(limits.stream("alice").is_ok());
        drop(streams);
        assert!(limits.stream("bob").is_ok());
        drop(bobs);
        let again = limits.connect(ip(2));
        again.sign_in("bob").unwrap();
    }
}
