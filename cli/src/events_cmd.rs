//! `sluice events read | tail | find`: a broker's or channel's stored events, through a node's admin API
//! (`sluice.admin.v1.Events`). See docs/operations.md, "Events".
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 refused/invalid, 5 unavailable.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, Subcommand};
use sluice_proto::admin::events_client::EventsClient;
use sluice_proto::admin::{EventStreamRef, FindEventsRequest, LoggedEvent, ReadEventsRequest, TailEventsRequest};

/// Most events one `sluice events read` prints (it pages through the API, at most 1000 per call).
const MAX_LIMIT: u64 = 100_000;

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Stored events by offset or time range, optionally filtered by CESQL.
    Read(ReadArgs),
    /// New events as they are committed, until Ctrl-C.
    Tail(TailArgs),
    /// Every stored event with this source and id (newest first).
    Find(FindArgs),
}

#[derive(Args)]
pub(crate) struct Target {
    /// The broker whose events to show.
    #[arg(long, required_unless_present_any = ["channel", "stream"], conflicts_with_all = ["channel", "stream"])]
    broker: Option<String>,
    /// A channel instead of a broker.
    #[arg(long, conflicts_with = "stream")]
    channel: Option<String>,
    /// A raw stream name instead (e.g. broker/default/b).
    #[arg(long)]
    stream: Option<String>,
    /// Namespace of the broker or channel.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Admin address of a node.
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
    /// Output format (json/yaml: one object per event for tail).
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
    output: String,
}

impl Target {
    fn to_ref(&self) -> EventStreamRef {
        match (&self.broker, &self.channel, &self.stream) {
            (_, _, Some(stream)) => EventStreamRef { stream: stream.clone(), ..Default::default() },
            (_, Some(channel), _) => EventStreamRef {
                kind: "channel".into(),
                namespace: self.namespace.clone(),
                name: channel.clone(),
                stream: String::new(),
            },
            (broker, _, _) => EventStreamRef {
                kind: "broker".into(),
                namespace: self.namespace.clone(),
                name: broker.clone().unwrap_or_default(),
                stream: String::new(),
            },
        }
    }
}

#[derive(Args)]
pub(crate) struct ReadArgs {
    #[command(flatten)]
    target: Target,
    /// One partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// First offset (inclusive), in each partition read.
    #[arg(long)]
    from_offset: Option<u64>,
    /// End offset (exclusive).
    #[arg(long)]
    to_offset: Option<u64>,
    /// Events that arrived within this long before now (e.g. 10m, 2h).
    #[arg(long, conflicts_with = "from_time")]
    since: Option<String>,
    /// Events that arrived at or after this time (RFC 3339).
    #[arg(long)]
    from_time: Option<String>,
    /// Events that arrived before this time (RFC 3339).
    #[arg(long)]
    to_time: Option<String>,
    /// CESQL filter, e.g. "type = 'order.created'".
    #[arg(long)]
    filter: Option<String>,
    /// Most events to print.
    #[arg(long, default_value_t = 100)]
    limit: u64,
}

#[derive(Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    target: Target,
    /// One partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Start at this offset instead of now.
    #[arg(long, conflicts_with = "since")]
    from_offset: Option<u64>,
    /// Start with the events that arrived within this long before now (e.g. 10m).
    #[arg(long)]
    since: Option<String>,
    /// CESQL filter.
    #[arg(long)]
    filter: Option<String>,
}

#[derive(Args)]
pub(crate) struct FindArgs {
    #[command(flatten)]
    target: Target,
    /// The event's source attribute.
    #[arg(long)]
    source: String,
    /// The event's id attribute.
    #[arg(long)]
    id: String,
    /// Most records to look at (over all partitions; the server caps it at 1,000,000).
    #[arg(long, default_value_t = 100_000)]
    max_scanned: u64,
    /// Scan oldest first instead of newest first.
    #[arg(long)]
    oldest_first: bool,
}

/// A failure with the exit code it maps to, or a write to standard output that failed (a closed pipe, which
/// `main` turns into a quiet exit), kept as the `io::Error` it is.
enum Failure {
    Exit { code: i32, message: String },
    Output(std::io::Error),
}

impl Failure {
    fn exit(code: i32, message: impl Into<String>) -> Self {
        Self::Exit { code, message: message.into() }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::exit(2, message)
    }

    fn status(status: tonic::Status) -> Self {
        let code = i32::from(crate::admin_cli::exit_code_for(&status));
        Self::exit(code, format!("{}{}", status.message(), crate::admin_cli::error_code_suffix(&status)))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::exit(1, format!("{e:#}"))
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e)
    }
}

pub(crate) async fn run(command: Command) -> Result<()> {
    let result = match command {
        Command::Read(args) => read(args).await,
        Command::Tail(args) => tail(args).await,
        Command::Find(args) => find(args).await,
    };
    // `main` turns an AdminError into the process exit code (docs/operations.md, "Exit codes").
    result.map_err(|failure| match failure {
        Failure::Exit { code, message } => {
            anyhow::Error::new(crate::admin_cli::AdminError { exit_code: u8::try_from(code).unwrap_or(1), message })
        }
        Failure::Output(e) => anyhow::Error::new(e).context("writing to standard output"),
    })
}

async fn connect(admin: &str) -> Result<EventsClient<crate::admin_channel::AdminChannel>, Failure> {
    let channel = crate::admin_channel::connect(admin).await.map_err(|e| {
        let code = e.downcast_ref::<crate::admin_cli::AdminError>().map_or(1, |admin| admin.exit_code);
        Failure::exit(i32::from(code), format!("{e}"))
    })?;
    Ok(EventsClient::new(channel).max_decoding_message_size(64 << 20))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn since_ms(flag: &str, text: &str) -> Result<u64, Failure> {
    let duration =
        sluice_controller::validate::parse_duration(text).map_err(|e| Failure::usage(format!("{flag}: {e}")))?;
    Ok(now_ms().saturating_sub(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)))
}

fn time_ms(flag: &str, text: &str) -> Result<u64, Failure> {
    let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        Failure::usage(format!("{flag}: {text:?} is not an RFC 3339 time like 2024-05-01T12:00:00Z: {e}"))
    })?;
    u64::try_from(time.timestamp_millis()).map_err(|_| Failure::usage(format!("{flag}: before 1970")))
}

fn filter_of(filter: &Option<String>) -> Result<String, Failure> {
    let text = filter.clone().unwrap_or_default();
    if !text.is_empty() {
        // Checked here too, so that a typo is a usage error before any call.
        let parsed = sluice_cesql::parse(&text).map_err(|e| Failure::exit(4, format!("--filter: {e}")))?;
        parsed.check_functions().map_err(|e| Failure::exit(4, format!("--filter: {e}")))?;
    }
    Ok(text)
}

async fn read(args: ReadArgs) -> Result<(), Failure> {
    if args.limit == 0 || args.limit > MAX_LIMIT {
        return Err(Failure::usage(format!("--limit: between 1 and {MAX_LIMIT}")));
    }
    let from_time_ms = match (&args.since, &args.from_time) {
        (Some(since), _) => Some(since_ms("--since", since)?),
        (None, Some(from)) => Some(time_ms("--from-time", from)?),
        (None, None) => None,
    };
    let to_time_ms = args.to_time.as_deref().map(|t| time_ms("--to-time", t)).transpose()?;
    // An empty range is a mistake in the arguments, not an empty stream. Regression: an empty table, exit 0.
    if let (Some(from), Some(to)) = (args.from_offset, args.to_offset)
        && to < from
    {
        return Err(Failure::usage(format!("--to-offset {to} is before --from-offset {from}")));
    }
    if let (Some(from), Some(to)) = (from_time_ms, to_time_ms)
        && to < from
    {
        return Err(Failure::usage("--to-time is before --from-time (or --since)".to_string()));
    }
    let mut request = ReadEventsRequest {
        target: Some(args.target.to_ref()),
        partition: args.partition,
        from_offset: args.from_offset,
        to_offset: args.to_offset,
        from_time_ms,
        to_time_ms,
        filter: filter_of(&args.filter)?,
        max_events: 0,
        max_bytes: 0,
        page_token: String::new(),
    };
    let mut client = connect(&args.target.admin).await?;
    let mut events = Vec::new();
    loop {
        let left = args.limit - events.len() as u64;
        request.max_events = left.min(1000) as u32;
        let reply = client.read(request.clone()).await.map_err(Failure::status)?.into_inner();
        events.extend(reply.events);
        if reply.next_page_token.is_empty() || events.len() as u64 >= args.limit {
            break;
        }
        request.page_token = reply.next_page_token;
    }
    print_events(&args.target.output, &events)
}

async fn find(args: FindArgs) -> Result<(), Failure> {
    let mut client = connect(&args.target.admin).await?;
    let reply = client
        .find(FindEventsRequest {
            target: Some(args.target.to_ref()),
            source: args.source.clone(),
            id: args.id.clone(),
            max_scanned: args.max_scanned,
            oldest_first: args.oldest_first,
        })
        .await
        .map_err(Failure::status)?
        .into_inner();
    print_events(&args.target.output, &reply.events)
}

async fn tail(args: TailArgs) -> Result<(), Failure> {
    let from_time_ms = args.since.as_deref().map(|s| since_ms("--since", s)).transpose()?;
    let mut client = connect(&args.target.admin).await?;
    let mut stream = client
        .tail(TailEventsRequest {
            target: Some(args.target.to_ref()),
            partition: args.partition,
            from_offset: args.from_offset,
            from_time_ms,
            filter: filter_of(&args.filter)?,
        })
        .await
        .map_err(Failure::status)?
        .into_inner();
    let output = args.target.output.as_str();
    if output == "table" {
        outln!("{}", table_header())?;
    }
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            _ = &mut stop => return Ok(()),
            message = stream.message() => message,
        };
        let Some(event) = message.map_err(Failure::status)? else {
            return Err(Failure::exit(5, "the node ended the tail (it is shutting down?)"));
        };
        let mut out = std::io::stdout().lock();
        match output {
            "json" => writeln!(out, "{}", event_json_text(&event, false))?,
            "yaml" => {
                let yaml = serde_yaml_ng::to_string(&event_json(&event)).map_err(|e| anyhow::anyhow!(e))?;
                write!(out, "---\n{yaml}")?
            }
            _ => writeln!(out, "{}", table_row(&event))?,
        }
        out.flush()?;
    }
}

fn print_events(output: &str, events: &[LoggedEvent]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match output {
        "json" => {
            let records: Vec<String> = events.iter().map(|e| event_json_text(e, true)).collect();
            // Not re-indented: the events' JSON stays byte for byte.
            writeln!(out, "[\n{}\n]", records.join(",\n"))?;
        }
        "yaml" => {
            let json: Vec<serde_json::Value> = events.iter().map(event_json).collect();
            write!(out, "{}", serde_yaml_ng::to_string(&json).map_err(|e| anyhow::anyhow!(e))?)?;
        }
        _ => {
            writeln!(out, "{}", table_header())?;
            for event in events {
                writeln!(out, "{}", table_row(event))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// An event for `-o json`: where it is, when it arrived, and the event in the CloudEvents JSON format exactly as
/// the node wrote it (JSON data byte for byte: never parsed into floats, keys in the order sent).
fn event_json_text(event: &LoggedEvent, pretty: bool) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Record<'a> {
        partition: u32,
        offset: u64,
        arrival_ms: u64,
        arrival_time: String,
        size: usize,
        event: &'a serde_json::value::RawValue,
    }
    let null = serde_json::value::RawValue::from_string("null".into());
    let parsed = serde_json::from_str::<&serde_json::value::RawValue>(&event.json);
    let event_raw = match (&parsed, &null) {
        (Ok(raw), _) => *raw,
        (Err(_), Ok(null)) => null.as_ref(),
        (Err(_), Err(_)) => return "null".into(),
    };
    let record = Record {
        partition: event.partition,
        offset: event.offset,
        arrival_ms: event.arrival_ms,
        arrival_time: arrival_time(event.arrival_ms),
        size: event.data.len(),
        event: event_raw,
    };
    let text = if pretty { serde_json::to_string_pretty(&record) } else { serde_json::to_string(&record) };
    text.unwrap_or_else(|_| "null".into())
}

/// An event for `-o yaml`: as `-o json`, through YAML's own number types.
fn event_json(event: &LoggedEvent) -> serde_json::Value {
    let structured = event_value(&event.json);
    serde_json::json!({
        "partition": event.partition,
        "offset": event.offset,
        "arrivalMs": event.arrival_ms,
        "arrivalTime": arrival_time(event.arrival_ms),
        "size": event.data.len(),
        "event": structured,
    })
}

/// An event in the CloudEvents JSON format as a value (for YAML, and `dlq list -o json`): a member that
/// serde_json cannot hold as a value (a number past an f64, nesting deeper than 128) is kept as its JSON text,
/// a string. Regression: such an event (valid JSON, accepted by ingress) was shown as `null`, or left out.
pub(crate) fn event_value(json: &str) -> serde_json::Value {
    if let Ok(value) = serde_json::from_str(json) {
        return value;
    }
    match serde_json::from_str::<std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>>(json) {
        Ok(members) => serde_json::Value::Object(
            members
                .into_iter()
                .map(|(name, raw)| {
                    let value = serde_json::from_str(raw.get())
                        .unwrap_or_else(|_| serde_json::Value::String(raw.get().to_string()));
                    (name, value)
                })
                .collect(),
        ),
        Err(_) => serde_json::Value::String(json.to_string()),
    }
}

/// Arrival time with milliseconds (UTC), for tables and JSON.
fn arrival_time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn table_header() -> String {
    format!(
        "{:>4} {:>10}  {:<24}  {:<28} {:<28} {:<24} {:>9}",
        "PART", "OFFSET", "ARRIVED", "TYPE", "SOURCE", "ID", "SIZE"
    )
}

fn table_row(event: &LoggedEvent) -> String {
    let attr = |name: &str| event.attributes.get(name).map(String::as_str).unwrap_or("-").to_string();
    format!(
        "{:>4} {:>10}  {:<24}  {:<28} {:<28} {:<24} {:>9}",
        event.partition,
        event.offset,
        arrival_time(event.arrival_ms),
        attr("type"),
        attr("source"),
        attr("id"),
        crate::admin_cli::human_size(event.data.len() as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Events {
        #[command(subcommand)]
        command: Command,
    }

    /// Regression: an empty range printed an empty table and exited 0. Refused before any node is asked.
    #[tokio::test]
    async fn regression_a_range_that_ends_before_it_starts_is_a_usage_error() {
        use clap::Parser;
        let cases: [&[&str]; 2] = [
            &["events", "read", "--broker", "b", "--from-offset", "7", "--to-offset", "3"],
            &[
                "events",
                "read",
                "--broker",
                "b",
                "--from-time",
                "2026-12-02T00:00:00Z",
                "--to-time",
                "2026-12-01T00:00:00Z",
            ],
        ];
        for args in cases {
            let Command::Read(read_args) = Events::parse_from(args.iter().chain(&["--admin", "127.0.0.1:1"])).command
            else {
                panic!("read")
            };
            match read(read_args).await {
                Err(Failure::Exit { code, message }) => assert_eq!(code, 2, "{args:?}: {message}"),
                _ => panic!("{args:?}: not refused as a usage error"),
            }
        }
    }

    #[test]
    fn regression_an_event_whose_data_serde_json_cannot_hold_is_shown_not_nulled() {
        let head = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"#;
        let plain = event_value(&format!("{head}{{\"a\":1.5}}}}"));
        assert_eq!(plain["data"]["a"], 1.5);
        let huge = event_value(&format!("{head}{{\"a\":1e400}}}}"));
        assert_eq!(huge["id"], "1");
        assert_eq!(huge["data"], r#"{"a":1e400}"#, "kept as its JSON text");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let nested = event_value(&format!("{head}{deep}}}"));
        assert_eq!(nested["type"], "t", "{nested}");
        assert_eq!(nested["data"], deep.as_str());
    }

    /// `events read -o json` showed `{"big": 123456789012345678901234567890}` as `1.2345678901234568e+29`, `1e2` as
    /// `100.0`, and re-sorted object keys.
    #[test]
    fn events_read_json_shows_the_data_byte_for_byte() {
        let json = r#"{"id":"1","data":{"zeta":1e2,"big":123456789012345678901234567890}}"#;
        let event = LoggedEvent { partition: 1, offset: 7, json: json.into(), ..Default::default() };
        for pretty in [false, true] {
            let text = event_json_text(&event, pretty);
            assert!(text.contains(json), "{text}");
            let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(parsed["offset"], 7);
        }
    }

    #[test]
    fn times_are_parsed_and_shown() {
        assert_eq!(arrival_time(0), "1970-01-01T00:00:00.000Z");
        assert!(time_ms("--from-time", "2024-05-01T12:00:00Z").is_ok());
        assert!(time_ms("--from-time", "yesterday").is_err());
        assert!(since_ms("--since", "10m").is_ok_and(|t| t < now_ms()));
    }
}
