//! Turning the errors of the parts below the daemon into what the API answers. One place, so
//! that the same failure reads the same whichever feature met it.

use vessel_api::ApiError;
use vessel_store::StoreError;

/// The store failing is the daemon failing (500); the caller can only try again.
pub(crate) fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(format!("the store failed: {e}"))
}

/// An unexpected failure (500). Only its outermost message: the causes below it may name host
/// paths the caller has no business reading.
pub(crate) fn internal(e: anyhow::Error) -> ApiError {
    ApiError::internal(e.to_string())
}

/// An error and its sources on one line: "outer: inner: innermost".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_reads_outer_to_inner_and_internal_keeps_only_the_outer_message() {
        let inner = std::io::Error::other("disk full");
        let outer = anyhow::Error::new(inner).context("cannot write the seed");
        assert_eq!(
            error_chain(outer.as_ref() as &dyn std::error::Error),
            "cannot write the seed: disk full"
        );
        let e = internal(outer);
        assert_eq!(e.code, vessel_api::ErrorCode::Internal);
        assert_eq!(e.message, "cannot write the seed");
    }
}
