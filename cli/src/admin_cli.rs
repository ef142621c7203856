//! What the admin commands share: exit codes from gRPC errors, human-readable times and sizes.
//!
//! Exit codes (docs/operations.md): 0 ok, 1 error, 2 usage (clap), 3 not found, 4 refused (invalid, not
//! allowed now, or not allowed to this caller's role), 5 unavailable (retry), 6 unauthenticated (no or
//! unknown credentials).

use std::fmt;

use tonic::{Code, Status};

/// An admin API error carried to `main`, which turns it into the process exit code.
#[derive(Debug)]
pub(crate) struct AdminError {
    pub exit_code: u8,
    pub message: String,
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AdminError {}

/// An admin API error about a Kubernetes-style object, printed as kubectl prints a server's answer:
/// `Error from server (NotFound): triggers.eventing.knative.dev "nope" not found (RESOURCE_NOT_FOUND 1008)`.
#[derive(Debug)]
pub(crate) struct ServerError {
    pub exit_code: u8,
    /// kubectl's reason: `NotFound`.
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error from server ({}): {}", self.reason, self.message)
    }
}

impl std::error::Error for ServerError {}

pub(crate) const EXIT_NOT_FOUND: u8 = 3;
pub(crate) const EXIT_REFUSED: u8 = 4;
pub(crate) const EXIT_UNAVAILABLE: u8 = 5;
pub(crate) const EXIT_UNAUTHENTICATED: u8 = 6;

/// The exit code for a gRPC status: by its gRPC code, except that `NO_LEADER` (FAILED_PRECONDITION, as gRPC
/// sees it) is worth retrying: an election ends within seconds.
pub(crate) fn exit_code_for(status: &Status) -> u8 {
    let no_leader = sluice_proto::errors::error_detail(status)
        .is_some_and(|detail| detail.code == sluice_proto::errors::ErrorCode::NoLeader as u32);
    if no_leader {
        return EXIT_UNAVAILABLE;
    }
    exit_code_for_code(status.code())
}

fn exit_code_for_code(code: Code) -> u8 {
    match code {
        Code::NotFound => EXIT_NOT_FOUND,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::PermissionDenied => EXIT_REFUSED,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted => EXIT_UNAVAILABLE,
        Code::Unauthenticated => EXIT_UNAUTHENTICATED,
        _ => 1,
    }
}

/// ` (RESOURCE_NOT_FOUND 1008)`: the Sluice error code a status carries, as the CLI prints it after a message
/// (empty without one).
pub(crate) fn error_code_suffix(status: &Status) -> String {
    sluice_proto::errors::error_detail(status)
        .map(|detail| format!(" ({} {})", detail.name, detail.code))
        .unwrap_or_default()
}

/// Wraps a gRPC error with its Sluice error code in the message.
pub(crate) fn from_status(status: Status) -> anyhow::Error {
    let mut message = format!("{}{}", status.message(), error_code_suffix(&status));
    if let Some(hint) = wrong_port_hint(&status) {
        message = format!("{message}: {hint}");
    }
    anyhow::Error::new(AdminError { exit_code: exit_code_for(&status), message })
}

/// What to check when a call failed below gRPC, with nothing from a Sluice server: the address is another port
/// (the HTTP ingress, the Raft peers) or a TLS one spoken to in plaintext. Regression: those printed `error: `
/// (nothing), `transport error`, or `received message with invalid compression flag`.
fn wrong_port_hint(status: &Status) -> Option<&'static str> {
    if sluice_proto::errors::error_detail(status).is_some() {
        return None;
    }
    let message = status.message();
    let below_grpc = message.is_empty()
        || ["transport error", "compression flag", "h2 protocol error", "operation was canceled", "broken pipe"]
            .iter()
            .any(|sign| message.contains(sign));
    let code_says_so = matches!(
        status.code(),
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable | tonic::Code::Cancelled
    );
    (below_grpc && code_says_so).then_some(
        "is --admin a node's admin port (127.0.0.1:9090 by default; not its HTTP or peer port)? A node serving TLS \
         needs --ca-cert (and --client-cert/--client-key where it asks for client certificates)",
    )
}

/// `2026-11-21 23:05:01` (UTC) from milliseconds since the epoch.
pub(crate) fn human_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `1.5s`, `3m`, `2h` from milliseconds.
pub(crate) fn human_age(ms: u64) -> String {
    match ms {
        0 => "-".into(),
        ms if ms < 1_000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => format!("{}m", ms / 60_000),
        ms => format!("{:.1}h", ms as f64 / 3_600_000.0),
    }
}

/// `512B`, `1.2KiB`, `3.4MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Times given on the command line: RFC 3339, or an age like `10m`, `2h`, `1d` (that long ago).
pub(crate) fn parse_time_ms(text: &str) -> anyhow::Result<u64> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis().max(0) as u64);
    }
    let ago = sluice_controller::validate::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("{text:?} is neither an RFC 3339 time nor an age like 10m: {e}"))?;
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    Ok(now.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_forms() {
        assert_eq!(human_size(10), "10B");
        assert_eq!(human_size(1536), "1.5KiB");
        assert_eq!(human_size(5 << 20), "5.0MiB");
        assert_eq!(human_age(0), "-");
        assert_eq!(human_age(1500), "1.5s");
        assert_eq!(human_age(180_000), "3m");
        assert_eq!(human_time(0), "1970-01-01 00:00:00");
        assert_eq!(exit_code_for(&Status::not_found("x")), 3);
        assert_eq!(exit_code_for(&Status::unavailable("x")), 5);
    }

    #[test]
    fn no_leader_is_retried_where_other_refusals_are_not() {
        use sluice_proto::errors::{ErrorCode, error_status};
        let cases = [
            (ErrorCode::NoLeader, EXIT_UNAVAILABLE, "an election ends: retry"),
            (ErrorCode::NotInitialized, EXIT_REFUSED, "the same FAILED_PRECONDITION, not worth retrying as it is"),
            (ErrorCode::MembershipRefused, EXIT_REFUSED, "refused"),
            (ErrorCode::QueueFull, EXIT_UNAVAILABLE, "retry later"),
            (ErrorCode::ResourceNotFound, EXIT_NOT_FOUND, "not found"),
        ];
        for (code, exit, why) in cases {
            assert_eq!(exit_code_for(&error_status(code, "x")), exit, "{code:?}: {why}");
        }
        assert!(parse_time_ms("2026-01-01T00:00:00Z").is_ok_and(|t| t == 1_767_225_600_000));
        assert!(parse_time_ms("10m").is_ok());
        assert!(parse_time_ms("yesterday").is_err());
    }

    #[test]
    fn a_failure_below_grpc_says_which_ports_and_flags_to_check() {
        let hinted = [
            Status::unknown(""),
            Status::unknown("transport error"),
            Status::internal("protocol error: received message with invalid compression flag: 123"),
            Status::unknown("h2 protocol error: error reading a body from connection"),
            Status::cancelled("operation was canceled"),
        ];
        for status in hinted {
            assert!(wrong_port_hint(&status).is_some(), "{status:?}");
        }
        let not_hinted = [
            Status::unavailable("group 1 has no leader right now"),
            Status::not_found("Trigger default/t not found"),
            Status::unauthenticated(""),
        ];
        for status in not_hinted {
            assert!(wrong_port_hint(&status).is_none(), "{status:?}");
        }
    }
}
