//! What a failed gRPC call to a peer means to the callers of the transport: openraft's error kinds, and
//! whether the call never reached the peer.

use openraft::error::{NetworkError, RPCError, Unreachable};

use crate::command::TypeConfig;

/// openraft's view of a failed call: `Unreachable` (it backs off and retries) or a network error.
pub(crate) fn status_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::from_string(status.message().to_string()))
        }
        _ => RPCError::Network(NetworkError::from_string(status.message().to_string())),
    }
}

/// Whether the call failed because no connection could be made: nothing reached the peer.
pub(crate) fn is_connect_error(status: &tonic::Status) -> bool {
    // tonic reports a refused connection as Unavailable with a transport source.
    let text = format!("{status:?}");
    text.contains("Connection refused") || text.contains("tcp connect error") || text.contains("connect error")
}
