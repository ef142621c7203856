//! What can go wrong in serving, with the status a request is answered with.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("revision {revision}: cannot start {command:?}: {reason}")]
    Spawn { revision: String, command: String, reason: String },
    #[error("no free port for an instance: {0}")]
    NoPort(std::io::Error),
    #[error("no Route serves host {host:?}")]
    NoRoute { host: String },
    #[error("revision {revision} has {limit} requests waiting already")]
    QueueFull { revision: String, limit: usize },
    /// The app did not start its response in time (`timeoutSeconds`, `responseStartTimeoutSeconds`): a 504, as
    /// Knative's queue-proxy answers; the request reached the app, which may have acted on it.
    #[error("revision {revision} did not answer within {after_ms} ms")]
    Timeout { revision: String, after_ms: u64 },
    /// No instance had room for the request before its `timeoutSeconds` ran out while it waited in the gate: a
    /// 503 with `Retry-After`, as Knative's activator answers a request whose deadline passes in its queue. The
    /// request was never sent, so sending it again cannot repeat anything.
    /// `waiting_for_room`: why no instance could start meanwhile (the node's instance limit), when that was so.
    #[error(
        "revision {revision} had no instance with room for the request within {waited_ms} ms; it was not sent{}",
        waiting_for_room.as_ref().map(|reason| format!(" (no instance could start on this node: {reason})")).unwrap_or_default()
    )]
    NoCapacity { revision: String, waited_ms: u64, waiting_for_room: Option<String> },
    #[error("revision {revision} cannot start: {reason}")]
    RevisionFailed { revision: String, reason: String },
    #[error("revision {revision}: {reason}")]
    Upstream { revision: String, reason: String },
    /// The client's own request body broke on its way to the app (reset or half-closed mid-upload, shorter than
    /// its `Content-Length`): a 400, the client's failure and not the app's (it was a 502, counted against the
    /// revision). The app may have seen part of the body.
    #[error("revision {revision}: the client's request body broke before it was sent whole: {reason}")]
    ClientBody { revision: String, reason: String },
    /// A Route names the revision, and this node does not run it (yet: its start follows the route; or no more:
    /// the node is stopping): a 503 to try again, not a 502 as if the app had failed.
    #[error("revision {revision} is not running on this node")]
    NotRunning { revision: String },
    /// The runtime has no room for another instance now (the node's instance limit, a fixed port held by an
    /// instance still draining): the start is tried again at the revision's next turn, and is no failure.
    #[error("revision {revision}: an instance waits to start: {reason}")]
    NoRoom { revision: String, reason: String },
    /// The revision stopped (taken off traffic, its Service changed or deleted) before the request got a slot:
    /// the request, not sent yet, goes to the revision the route picks now.
    #[error("revision {revision} stopped before the request was sent")]
    RevisionStopped { revision: String },
}

impl ServingError {
    /// The HTTP status a request gets for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ServingError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ServingError::QueueFull { .. } | ServingError::NoCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServingError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServingError::RevisionFailed { .. }
            | ServingError::Spawn { .. }
            | ServingError::NoPort(_)
            | ServingError::RevisionStopped { .. }
            | ServingError::NotRunning { .. }
            | ServingError::NoRoom { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServingError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ServingError::ClientBody { .. } => StatusCode::BAD_REQUEST,
        }
    }
}
