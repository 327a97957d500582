//! The implementation-neutral watch handle.

use async_trait::async_trait;

use crate::{StoreError, WatchEvent};

/// What a store implementation provides behind a [`Watch`].
///
/// Pull-based on purpose: nothing runs while the consumer is not asking, so a slow consumer costs
/// no memory beyond what the implementation chooses to buffer, and dropping the watch ends it.
#[async_trait]
pub trait WatchStream: Send {
    /// The next event, waiting for it if needed. After an error the stream is finished: it returns
    /// an error again on every later call. Must be cancel-safe: a call dropped before it completes
    /// consumes no event.
    async fn next(&mut self) -> Result<WatchEvent, StoreError>;
}

/// A stream of [`WatchEvent`]s under one key prefix, in revision order. Dropping it cancels it.
pub struct Watch {
    inner: Box<dyn WatchStream>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Wraps an implementation's stream; used by [`crate::Store`] implementations.
    pub fn new(stream: impl WatchStream + 'static) -> Self {
        Self {
            inner: Box::new(stream),
        }
    }

    /// The next event, waiting for it if needed. Cancel-safe: dropping the future (for example
    /// in `tokio::select!`) loses no event.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        self.inner.next().await
    }
}
