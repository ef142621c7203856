//! Stable Sluice error codes for the admin API. Every admin error is a gRPC status whose details follow the
//! richer error model: the `grpc-status-details-bin` trailer holds a `google.rpc.Status` (the same code and
//! message) whose `details` carry one `ErrorDetail { code, name }` packed as `google.protobuf.Any`, so that
//! grpc-go clients (grpcurl) and every other gRPC client decode it as they expect. Codes are listed in
//! `docs/operations.md`; a code, once published, keeps its meaning, and a retired code is never reused.
//! New codes go at the end.

use crate::admin::ErrorDetail;
use prost::Message;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Something Sluice did not classify.
    Internal = 1000,
    /// A request field is malformed (the message names it).
    InvalidArgument = 1001,
    /// The cluster is not initialised yet.
    NotInitialized = 1002,
    /// The cluster is already initialised with another configuration.
    AlreadyInitialized = 1003,
    /// The node cannot answer now (shutting down, or a write's outcome is unknown): retry, and do not assume
    /// either outcome of a write.
    Unavailable = 1004,
    /// A partition's append queue is full: retry later.
    QueueFull = 1005,
    /// An append exceeds the entry size limit.
    TooLarge = 1006,
    /// The partition does not exist.
    NoSuchPartition = 1007,
    /// The resource object does not exist.
    ResourceNotFound = 1008,
    /// The resource object is invalid (the message lists the fields).
    InvalidResource = 1009,
    /// The node is not a cluster member, or the member does not exist.
    NoSuchMember = 1010,
    /// The membership change is not allowed (e.g. removing the last voter).
    MembershipRefused = 1011,
    /// The Trigger or Subscription does not exist.
    ConsumerNotFound = 1012,
    /// The stream does not exist or is empty at the requested position.
    NoSuchStream = 1013,
    /// No leader for the group right now; nothing was written: retry.
    NoLeader = 1014,
    /// No stored event matches (`Events.Find`; the message says how much was scanned).
    EventNotFound = 1015,
    /// A tail's client took no event for a while with its buffer full: the stream is dropped; tail again from
    /// the offset the message names.
    TailTooSlow = 1016,
    /// The Trigger or Subscription cannot be dispatched now (its Broker is missing, its subscriber does not
    /// resolve); the message says why.
    ConsumerNotDispatchable = 1017,
    /// A redrive of the same Trigger or Subscription is already running on this node: wait for it to end.
    RedriveRunning = 1018,
    /// A replay of the same Trigger or Subscription is asked and not applied yet: wait for it (`replay_pending_to`
    /// in its status) rather than overwrite it.
    ReplayPending = 1019,
    /// The object changed while an apply was checked against it (another apply landed first, or the node's copy
    /// was behind), again at every attempt: nothing was written; apply again.
    ResourceConflict = 1020,
}

impl ErrorCode {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotInitialized => "NOT_INITIALIZED",
            ErrorCode::AlreadyInitialized => "ALREADY_INITIALIZED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::NoSuchPartition => "NO_SUCH_PARTITION",
            ErrorCode::ResourceNotFound => "RESOURCE_NOT_FOUND",
            ErrorCode::InvalidResource => "INVALID_RESOURCE",
            ErrorCode::NoSuchMember => "NO_SUCH_MEMBER",
            ErrorCode::MembershipRefused => "MEMBERSHIP_REFUSED",
            ErrorCode::ConsumerNotFound => "CONSUMER_NOT_FOUND",
            ErrorCode::NoSuchStream => "NO_SUCH_STREAM",
            ErrorCode::NoLeader => "NO_LEADER",
            ErrorCode::EventNotFound => "EVENT_NOT_FOUND",
            ErrorCode::TailTooSlow => "TAIL_TOO_SLOW",
            ErrorCode::ConsumerNotDispatchable => "CONSUMER_NOT_DISPATCHABLE",
            ErrorCode::RedriveRunning => "REDRIVE_RUNNING",
            ErrorCode::ReplayPending => "REPLAY_PENDING",
            ErrorCode::ResourceConflict => "RESOURCE_CONFLICT",
        }
    }

    /// The gRPC code that goes with it.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::Internal => Code::Internal,
            ErrorCode::InvalidArgument | ErrorCode::InvalidResource => Code::InvalidArgument,
            ErrorCode::NotInitialized
            | ErrorCode::MembershipRefused
            | ErrorCode::NoLeader
            | ErrorCode::ConsumerNotDispatchable => Code::FailedPrecondition,
            ErrorCode::AlreadyInitialized => Code::AlreadyExists,
            ErrorCode::RedriveRunning | ErrorCode::ReplayPending | ErrorCode::ResourceConflict => Code::Aborted,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::QueueFull | ErrorCode::TailTooSlow => Code::ResourceExhausted,
            ErrorCode::TooLarge => Code::OutOfRange,
            ErrorCode::NoSuchPartition
            | ErrorCode::ResourceNotFound
            | ErrorCode::NoSuchMember
            | ErrorCode::ConsumerNotFound
            | ErrorCode::NoSuchStream
            | ErrorCode::EventNotFound => Code::NotFound,
        }
    }
}

/// The type URL under which [`ErrorDetail`] is packed into `google.protobuf.Any`.
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/sluice.admin.v1.ErrorDetail";

/// `google.rpc.Status` (google/rpc/status.proto): what the `grpc-status-details-bin` trailer holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// An admin error: the gRPC code of `code`, the message, and the Sluice code in the details.
pub fn error_status(code: ErrorCode, message: impl Into<String>) -> Status {
    let message = message.into();
    let grpc_code = code.grpc_code();
    let detail = ErrorDetail { code: code as u32, name: code.name().to_string() };
    let details = RpcStatus {
        code: grpc_code as i32,
        message: message.clone(),
        details: vec![prost_types::Any { type_url: ERROR_DETAIL_TYPE_URL.to_string(), value: detail.encode_to_vec() }],
    };
    Status::with_details(grpc_code, message, details.encode_to_vec().into())
}

/// The Sluice code in a status's details, if any (for clients and tests).
pub fn error_detail(status: &Status) -> Option<ErrorDetail> {
    let rpc_status = RpcStatus::decode(status.details()).ok()?;
    rpc_status
        .details
        .iter()
        .find(|any| any.type_url == ERROR_DETAIL_TYPE_URL)
        .and_then(|any| ErrorDetail::decode(any.value.as_slice()).ok())
        .filter(|d| d.code != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_round_trip() {
        let status = error_status(ErrorCode::QueueFull, "full");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let detail = error_detail(&status).expect("detail");
        assert_eq!((detail.code, detail.name.as_str()), (1005, "QUEUE_FULL"));
        assert!(error_detail(&Status::internal("plain")).is_none());
    }

    /// grpcurl printed `Code: Code(1008) Message: RESOURCE_NOT_FOUND`: the trailer held a bare ErrorDetail,
    /// which grpc-go decodes as a `google.rpc.Status` whose code and message are the detail's fields.
    #[test]
    fn status_details_are_a_google_rpc_status_with_the_detail_as_any() {
        let status = error_status(ErrorCode::ResourceNotFound, "Trigger default/nope not found");
        let rpc_status = RpcStatus::decode(status.details()).expect("a google.rpc.Status");
        assert_eq!(rpc_status.code, Code::NotFound as i32);
        assert_eq!(rpc_status.message, "Trigger default/nope not found");
        assert_eq!(rpc_status.details.len(), 1);
        assert_eq!(rpc_status.details[0].type_url, ERROR_DETAIL_TYPE_URL);
        let detail = ErrorDetail::decode(rpc_status.details[0].value.as_slice()).expect("an ErrorDetail");
        assert_eq!((detail.code, detail.name.as_str()), (1008, "RESOURCE_NOT_FOUND"));
    }
}
