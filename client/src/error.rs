use thiserror::Error;

/// Errors the SDK returns. Retryable conditions are retried inside the SDK until the deadline;
/// what reaches the caller is final for that call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request can never succeed as written (empty key, too large, inverted range, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The deadline passed while retrying; `last_error` says what kept failing.
    #[error("{operation} did not complete within {timeout_ms} ms; last error: {last_error}")]
    Timeout {
        operation: &'static str,
        timeout_ms: u64,
        last_error: String,
    },
    /// The placement driver refused the request.
    #[error("placement driver: {message}")]
    Placement { kind: i32, message: String },
    /// No placement member could be reached.
    #[error("cannot reach any placement member at {endpoints:?}: {detail}")]
    PlacementUnreachable {
        endpoints: Vec<String>,
        detail: String,
    },
    /// A write's attempt ended without an answer, so it may or may not have been applied, and
    /// the client was configured not to retry such writes (`retry_ambiguous_writes = false`).
    /// Read the data to find out, or write again if applying twice is harmless.
    #[error(
        "{operation} may or may not have been applied (no answer: {detail}); read to find out"
    )]
    Ambiguous {
        operation: &'static str,
        detail: String,
    },
    /// A node or placement member answered with an error the SDK does not retry.
    #[error("server error: {0}")]
    Server(String),
}

impl ClientError {
    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. } | ClientError::PlacementUnreachable { .. }
        ) || matches!(self, ClientError::Placement { kind, .. }
            if *kind == ringkv_proto::pdpb::ErrorType::NotBootstrapped as i32)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;
