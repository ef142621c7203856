//! `sluice get | describe | delete | apply` behave as kubectl does, against a real node: one regression
//! test per defect of issue 14 (missing objects exit 3 with kubectl's message, a closed pipe is a quiet
//! exit, columns sized to their content, `get -w`, `-o name|jsonpath`, `-l`, several kinds and names,
//! `delete --all`, `apply --dry-run`, clean names in apply's output, dead letters typed as `events read`
//! types them).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::subscriber::{Reply, Subscriber};
use sluice_tests::{
    NodeProc, apply_resource, broker_object, send_event_accepted, sluice_bin, start_single_node, trigger_object,
    wait_until,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs the CLI to completion: (exit code, stdout, stderr).
async fn sluice(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let output =
        tokio::task::spawn_blocking(move || Command::new(sluice_bin()).args(&args).stdin(Stdio::null()).output())
            .await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Runs the CLI and expects exit 0; answers its stdout.
async fn sluice_ok(args: &[&str]) -> anyhow::Result<String> {
    let (code, stdout, stderr) = sluice(args).await?;
    anyhow::ensure!(code == 0, "sluice {args:?} exited {code}: {stderr}");
    Ok(stdout)
}

/// Runs the CLI with standard output a pipe whose reader is already closed: every write fails with EPIPE.
/// Answers (exit status, stderr).
async fn sluice_into_closed_pipe(args: &[&str]) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        let (reader, writer) = std::io::pipe()?;
        drop(reader);
        Command::new(sluice_bin()).args(&args).stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped()).output()
    })
    .await??;
    Ok((output.status, String::from_utf8_lossy(&output.stderr).into_owned()))
}

/// A node with broker `default` in namespace `default`.
async fn node_with_default_broker() -> anyhow::Result<(tempfile::TempDir, NodeProc)> {
    let (root, node) = start_single_node(1, &[]).await?;
    apply_resource(&node.admin, broker_object("default", "default", json!({}))).await?;
    Ok((root, node))
}

fn labelled_trigger(name: &str, labels: Value) -> Value {
    let mut trigger = trigger_object("default", name, "default", "http://127.0.0.1:1/", json!({}), json!({}));
    trigger["metadata"]["labels"] = labels;
    trigger
}

fn write_file(root: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = root.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

const NOT_FOUND: &str = "Error from server (NotFound): triggers.eventing.knative.dev \"nope\" not found";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_missing_trigger_exits_3() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    let (code, stdout, stderr) = sluice(&["delete", "trigger", "nope", "--admin", &node.admin]).await?;
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stderr.starts_with(NOT_FOUND), "{stderr}");
    assert!(stderr.contains("RESOURCE_NOT_FOUND 1008"), "{stderr}");
    assert!(stdout.is_empty(), "nothing deleted: {stdout}");
    // --ignore-not-found, as kubectl.
    let (code, _, stderr) =
        sluice(&["delete", "trigger", "nope", "--ignore-not-found", "--admin", &node.admin]).await?;
    assert_eq!(code, 0, "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_describe_of_missing_trigger_exit_3() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    for command in ["get", "describe"] {
        let (code, stdout, stderr) = sluice(&[command, "triggers", "nope", "--admin", &node.admin]).await?;
        assert_eq!(code, 3, "{command}: {stdout}{stderr}");
        assert!(stderr.starts_with(NOT_FOUND), "{command}: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_into_closed_pipe_exits_quietly() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    for args in [
        vec!["describe", "broker", "default"],
        vec!["get", "brokers"],
        vec!["get", "broker", "default", "-o", "yaml"],
        vec!["cluster", "status"],
    ] {
        let mut args = args;
        args.extend(["--admin", &node.admin]);
        let (status, stderr) = sluice_into_closed_pipe(&args).await?;
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: nothing on stderr: {stderr}");
        assert!(status.success(), "{args:?}: {status}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_read_into_closed_pipe_prints_no_error() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    let client = reqwest::Client::new();
    send_event_accepted(&client, &node.http, "/default/default", "e1", "hello", &[], "{}").await?;
    let (status, stderr) =
        sluice_into_closed_pipe(&["events", "read", "--broker", "default", "--admin", &node.admin]).await?;
    assert!(stderr.is_empty(), "no error: {stderr}");
    assert!(status.success(), "{status}");
    Ok(())
}

/// The offset (in characters) at which each of `headers` starts in the header line.
fn column_starts(header: &str, headers: &[&str]) -> Vec<usize> {
    headers
        .iter()
        .map(|h| {
            let byte = header.find(h).unwrap_or_else(|| panic!("no column {h} in {header:?}"));
            header[..byte].chars().count()
        })
        .collect()
}

/// Whether a cell starts at character `offset` of `line`: not a space, after a space.
fn cell_starts_at(line: &str, offset: usize) -> bool {
    let chars: Vec<char> = line.chars().collect();
    chars.get(offset).is_some_and(|c| *c != ' ') && (offset == 0 || chars.get(offset - 1) == Some(&' '))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_triggers_columns_stay_aligned_with_long_urls() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    let long = "http://a-subscriber-with-a-rather-long-host-name.example.com:8080/deliver/the/events/here?x=1";
    for (name, uri) in [("short", "http://127.0.0.1:1/"), ("long", long), ("a-much-longer-trigger-name", "http://x/")] {
        apply_resource(&node.admin, trigger_object("default", name, "default", uri, json!({}), json!({}))).await?;
    }
    let stdout = sluice_ok(&["get", "triggers", "--admin", &node.admin]).await?;
    let lines = lines(&stdout);
    assert_eq!(lines.len(), 4, "{stdout}");
    let headers = ["NAME", "BROKER", "SUBSCRIBER_URI", "AGE", "READY", "REASON"];
    let starts = column_starts(lines[0], &headers);
    assert!(lines[0].starts_with("NAME "), "{stdout}");
    for line in &lines[1..] {
        // Every column but REASON (empty when Ready) holds a cell that starts under its header.
        for (header, start) in headers.iter().zip(&starts).take(5) {
            assert!(cell_starts_at(line, *start), "{header} misaligned in {line:?}:\n{stdout}");
        }
        assert!(line.contains(" default "), "{line}");
    }
    assert!(stdout.contains(long), "the URL is shown whole: {stdout}");
    assert!(lines.iter().any(|l| l.starts_with("long ") && l.contains(" True")), "{stdout}");
    Ok(())
}

/// The next line of a running command's stdout, within 20 s.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("no line within 20 s"))??
        .ok_or_else(|| anyhow::anyhow!("stdout closed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_a_new_trigger() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    apply_resource(&node.admin, labelled_trigger("first", json!({}))).await?;
    let mut watch = tokio::process::Command::new(sluice_bin())
        .args(["get", "triggers", "-w", "--admin", &node.admin])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = watch.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let header = next_line(&mut lines).await?;
    assert!(header.starts_with("NAME") && header.contains("SUBSCRIBER_URI"), "{header}");
    let first = next_line(&mut lines).await?;
    assert!(first.starts_with("first "), "{first}");

    // The list is printed once the watch is open: a trigger applied now arrives as a row of its own (and
    // the watch's initial ADDED of `first` is not printed again).
    apply_resource(&node.admin, labelled_trigger("later", json!({}))).await?;
    let later = next_line(&mut lines).await?;
    assert!(later.starts_with("later ") && later.contains(" True"), "{later}");
    let starts = column_starts(&header, &["NAME", "BROKER", "SUBSCRIBER_URI", "AGE", "READY"]);
    // A row that fits keeps the list's column widths (they only ever widen, as kubectl's).
    for start in starts {
        assert!(cell_starts_at(&later, start), "aligned with the list: {header:?} / {later:?}");
    }
    let (code, _, stderr) = sluice(&["delete", "trigger", "first", "--admin", &node.admin]).await?;
    assert_eq!(code, 0, "{stderr}");
    let deleted = next_line(&mut lines).await?;
    assert!(deleted.starts_with("first "), "a deleted object is a row too: {deleted}");

    // Ctrl-C ends it, successfully.
    let pid = watch.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let status = Command::new("kill").args(["-INT", &pid.to_string()]).status()?;
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(10), watch.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_output_name_prints_each_change() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    apply_resource(&node.admin, labelled_trigger("first", json!({"app": "x"}))).await?;
    let mut watch = tokio::process::Command::new(sluice_bin())
        .args(["get", "triggers", "-w", "-o", "name", "-l", "app=x", "--admin", &node.admin])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = watch.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(next_line(&mut lines).await?, "trigger.eventing.knative.dev/first");
    // Not selected, then selected.
    apply_resource(&node.admin, labelled_trigger("other", json!({"app": "y"}))).await?;
    apply_resource(&node.admin, labelled_trigger("second", json!({"app": "x"}))).await?;
    assert_eq!(next_line(&mut lines).await?, "trigger.eventing.knative.dev/second");
    watch.start_kill()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_output_name_and_jsonpath() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    for name in ["a", "b"] {
        apply_resource(&node.admin, labelled_trigger(name, json!({}))).await?;
    }
    let admin = node.admin.as_str();
    let names = sluice_ok(&["get", "triggers", "-o", "name", "--admin", admin]).await?;
    assert_eq!(lines(&names), ["trigger.eventing.knative.dev/a", "trigger.eventing.knative.dev/b"]);
    let one = sluice_ok(&["get", "trigger", "a", "-o", "jsonpath={.metadata.name}", "--admin", admin]).await?;
    assert_eq!(one, "a", "a single object: the template applies to it");
    let all = sluice_ok(&["get", "triggers", "-o", "jsonpath={.items[*].metadata.name}", "--admin", admin]).await?;
    assert_eq!(all, "a b", "a List otherwise");
    let ranged = sluice_ok(&[
        "get",
        "triggers",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.broker}{"\n"}{end}"#,
        "--admin",
        admin,
    ])
    .await?;
    assert_eq!(ranged, "a\tdefault\nb\tdefault\n");
    let ready = sluice_ok(&[
        "get",
        "trigger",
        "a",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        "--admin",
        admin,
    ])
    .await?;
    assert_eq!(ready, "True");
    let (code, _, stderr) = sluice(&["get", "triggers", "-o", "jsonpath={.items[", "--admin", admin]).await?;
    assert_eq!(code, 2, "a malformed template is a usage error: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_label_selector() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    apply_resource(&node.admin, labelled_trigger("web", json!({"app": "shop", "tier": "web"}))).await?;
    apply_resource(&node.admin, labelled_trigger("db", json!({"app": "shop", "tier": "db"}))).await?;
    apply_resource(&node.admin, labelled_trigger("bare", json!({}))).await?;
    let admin = node.admin.as_str();
    let selected = |selector: &'static str| async move {
        let out = sluice_ok(&[
            "get",
            "triggers",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
            "--admin",
            admin,
        ])
        .await?;
        anyhow::Ok(out)
    };
    assert_eq!(selected("app=shop").await?, "db web");
    assert_eq!(selected("app=shop,tier=web").await?, "web");
    assert_eq!(selected("tier!=web").await?, "bare db", "!= matches objects without the label");
    assert_eq!(selected("tier in (db,cache)").await?, "db");
    assert_eq!(selected("tier notin (db)").await?, "bare web");
    assert_eq!(selected("tier").await?, "db web");
    assert_eq!(selected("!tier").await?, "bare");
    let table = sluice_ok(&["get", "triggers", "--selector", "tier=db", "--admin", admin]).await?;
    assert_eq!(lines(&table).len(), 2, "{table}");
    let (code, _, stderr) = sluice(&["get", "triggers", "-l", "app in (a", "--admin", admin]).await?;
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = sluice(&["get", "triggers", "-l", "app=x", "--admin", admin]).await?;
    assert_eq!(code, 0);
    assert!(stderr.contains("No resources found in default namespace."), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_several_kinds_and_names() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    for name in ["a", "b", "c"] {
        apply_resource(&node.admin, labelled_trigger(name, json!({}))).await?;
    }
    let admin = node.admin.as_str();
    let names = sluice_ok(&["get", "brokers,triggers", "-o", "name", "--admin", admin]).await?;
    assert_eq!(
        lines(&names),
        [
            "broker.eventing.knative.dev/default",
            "trigger.eventing.knative.dev/a",
            "trigger.eventing.knative.dev/b",
            "trigger.eventing.knative.dev/c",
        ]
    );
    let two = sluice_ok(&["get", "trigger", "c", "a", "-o", "name", "--admin", admin]).await?;
    assert_eq!(lines(&two), ["trigger.eventing.knative.dev/c", "trigger.eventing.knative.dev/a"], "in the order asked");
    let refs = sluice_ok(&["get", "trigger/b", "broker/default", "-o", "name", "--admin", admin]).await?;
    assert_eq!(lines(&refs), ["trigger.eventing.knative.dev/b", "broker.eventing.knative.dev/default"]);
    let list: Value =
        serde_json::from_str(&sluice_ok(&["get", "trigger", "a", "b", "-o", "json", "--admin", admin]).await?)?;
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));

    // A table per kind, names with their kind, a blank line between the blocks.
    let tables = sluice_ok(&["get", "broker,trigger", "--admin", admin]).await?;
    let blocks: Vec<&str> = tables.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{tables}");
    assert!(blocks[0].starts_with("NAME") && blocks[0].contains("URL"), "{tables}");
    assert!(blocks[0].contains("broker.eventing.knative.dev/default "), "{tables}");
    assert!(blocks[1].contains("SUBSCRIBER_URI") && blocks[1].contains("trigger.eventing.knative.dev/c "), "{tables}");

    // A missing name among found ones: the found ones are printed, then kubectl's error, exit 3.
    let (code, stdout, stderr) = sluice(&["get", "trigger", "a", "nope", "-o", "name", "--admin", admin]).await?;
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(stdout, "trigger.eventing.knative.dev/a\n");
    assert!(stderr.starts_with(NOT_FOUND), "{stderr}");

    // describe takes several names too.
    let described = sluice_ok(&["describe", "trigger", "a", "b", "--admin", admin]).await?;
    assert_eq!(described.matches("Name:         ").count(), 2, "{described}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_all() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    for name in ["a", "b", "c"] {
        apply_resource(&node.admin, labelled_trigger(name, json!({}))).await?;
    }
    apply_resource(&node.admin, trigger_object("other", "d", "default", "http://x/", json!({}), json!({}))).await?;
    let admin = node.admin.as_str();
    let deleted = sluice_ok(&["delete", "triggers", "--all", "--admin", admin]).await?;
    assert_eq!(
        lines(&deleted),
        [
            "trigger.eventing.knative.dev \"a\" deleted",
            "trigger.eventing.knative.dev \"b\" deleted",
            "trigger.eventing.knative.dev \"c\" deleted",
        ]
    );
    let left =
        sluice_ok(&["get", "triggers", "-A", "-o", "jsonpath={.items[*].metadata.name}", "--admin", admin]).await?;
    assert_eq!(left, "d", "another namespace is not touched");
    let deleted = sluice_ok(&["delete", "triggers", "--all", "-A", "--admin", admin]).await?;
    assert_eq!(lines(&deleted), ["trigger.eventing.knative.dev \"d\" deleted"]);

    // Several names; the brokers survive.
    for name in ["a", "b", "c"] {
        apply_resource(&node.admin, labelled_trigger(name, json!({}))).await?;
    }
    let deleted = sluice_ok(&["delete", "trigger", "a", "b", "c", "--admin", admin]).await?;
    assert_eq!(lines(&deleted).len(), 3, "{deleted}");
    let (code, _, stderr) = sluice(&["get", "triggers", "--admin", admin]).await?;
    assert_eq!(code, 0);
    assert!(stderr.contains("No resources found"), "{stderr}");
    assert_eq!(
        sluice_ok(&["get", "brokers", "-o", "name", "--admin", admin]).await?,
        "broker.eventing.knative.dev/default\n"
    );
    let (code, _, stderr) = sluice(&["delete", "triggers", "--admin", admin]).await?;
    assert_ne!(code, 0, "a kind alone deletes nothing without --all: {stderr}");
    Ok(())
}

/// Regression: `get -o yaml` of several objects prints a `kind: List`, which apply refused as an unknown kind
/// (kubectl applies its items).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_get_prints_as_a_list_applies_back_and_deletes() -> anyhow::Result<()> {
    let (root, node) = node_with_default_broker().await?;
    for name in ["a", "b"] {
        apply_resource(&node.admin, labelled_trigger(name, json!({"team": name}))).await?;
    }
    let admin = node.admin.as_str();
    let saved = sluice_ok(&["get", "triggers", "-o", "yaml", "--admin", admin]).await?;
    assert!(saved.contains("kind: List"), "{saved}");
    let file = write_file(root.path(), "saved.yaml", &saved)?;
    sluice_ok(&["delete", "-f", &file, "--admin", admin]).await?;
    let (_, _, stderr) = sluice(&["get", "triggers", "--admin", admin]).await?;
    assert!(stderr.contains("No resources found"), "the List's items were deleted: {stderr}");
    let applied = sluice_ok(&["apply", "-f", &file, "--admin", admin]).await?;
    assert_eq!(lines(&applied).len(), 2, "{applied}");
    let back = sluice_ok(&["get", "triggers", "-l", "team=b", "-o", "name", "--admin", admin]).await?;
    assert_eq!(back, "trigger.eventing.knative.dev/b\n", "applied back with its labels");
    Ok(())
}

const DRY_TRIGGER: &str = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: dry\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:1/\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_server_stores_nothing() -> anyhow::Result<()> {
    let (root, node) = node_with_default_broker().await?;
    let admin = node.admin.as_str();
    let file = write_file(root.path(), "dry.yaml", DRY_TRIGGER)?;
    for (mode, suffix) in [("server", "(server dry run)"), ("client", "(dry run)")] {
        let dry_run = format!("--dry-run={mode}");
        let out = sluice_ok(&["apply", "-f", &file, &dry_run, "--admin", admin]).await?;
        assert_eq!(out, format!("trigger.eventing.knative.dev/dry created {suffix}\n"));
        let (code, _, _) = sluice(&["get", "trigger", "dry", "--admin", admin]).await?;
        assert_eq!(code, 3, "{mode}: nothing stored");
    }
    sluice_ok(&["apply", "-f", &file, "--admin", admin]).await?;
    let out = sluice_ok(&["apply", "-f", &file, "--dry-run=server", "--admin", admin]).await?;
    assert_eq!(out, "trigger.eventing.knative.dev/dry unchanged (server dry run)\n");
    let changed = write_file(root.path(), "changed.yaml", &DRY_TRIGGER.replace("127.0.0.1:1", "127.0.0.1:2"))?;
    for mode in ["server", "client"] {
        let dry_run = format!("--dry-run={mode}");
        let out = sluice_ok(&["apply", "-f", &changed, &dry_run, "--admin", admin]).await?;
        assert!(out.starts_with("trigger.eventing.knative.dev/dry configured ("), "{mode}: {out}");
    }
    let uri = sluice_ok(&["get", "trigger", "dry", "-o", "jsonpath={.spec.subscriber.uri}", "--admin", admin]).await?;
    assert_eq!(uri, "http://127.0.0.1:1/", "the stored object is unchanged");

    // Invalid: refused by both dry runs (exit 4, the field named), nothing stored.
    let invalid = write_file(
        root.path(),
        "invalid.yaml",
        &DRY_TRIGGER
            .replace("name: dry", "name: bad")
            .replace("broker: default\n", "broker: default\n  delivery:\n    retry: -1\n"),
    )?;
    for mode in ["server", "client"] {
        let dry_run = format!("--dry-run={mode}");
        let (code, _, stderr) = sluice(&["apply", "-f", &invalid, &dry_run, "--admin", admin]).await?;
        assert_eq!(code, 4, "{mode}: {stderr}");
        assert!(stderr.contains("spec.delivery.retry"), "{mode}: {stderr}");
    }
    let (code, _, _) = sluice(&["get", "trigger", "bad", "--admin", admin]).await?;
    assert_eq!(code, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_names_objects_of_mixed_manifests_cleanly() -> anyhow::Result<()> {
    let (root, node) = node_with_default_broker().await?;
    let manifest = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: mixed\n---\n{DRY_TRIGGER}---\napiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: orders\n---\napiVersion: eventing.knative.dev/v1\nmetadata:\n  name: kindless\n"
    );
    let file = write_file(root.path(), "mixed.yaml", &manifest)?;
    let (code, stdout, stderr) = sluice(&["apply", "-f", &file, "--admin", &node.admin]).await?;
    assert_eq!(
        lines(&stdout),
        [
            "broker.eventing.knative.dev/mixed created",
            "trigger.eventing.knative.dev/dry created",
            "inmemorychannel.messaging.knative.dev/orders created",
        ]
    );
    assert_eq!(code, 4, "the document without a kind is refused: {stderr}");
    assert!(stderr.contains("document 3 (<no kind>/kindless)"), "{stderr}");
    Ok(())
}

/// Trigger `d` of broker `default`, whose subscriber answers 500, and one event `e1` dead-lettered:
/// answers `dlq list d -o json` once it lists the dead letter.
async fn one_dead_letter(node: &NodeProc) -> anyhow::Result<(Subscriber, Value)> {
    let admin = node.admin.as_str();
    let failing = Subscriber::start(Arc::new(|_, _| Reply::status(500))).await?;
    let spec = json!({"delivery": {"retry": 0}});
    apply_resource(admin, trigger_object("default", "d", "default", &failing.url(), spec, json!({}))).await?;
    let client = reqwest::Client::new();
    send_event_accepted(&client, &node.http, "/default/default", "e1", "hello", &[], "{\"n\":1}").await?;
    let listed = wait_until(Duration::from_secs(30), || async {
        let out = sluice_ok(&["dlq", "list", "d", "-o", "json", "--admin", admin]).await?;
        let listed: Value = serde_json::from_str(&out)?;
        Ok((listed["total"] == 1).then_some(listed))
    })
    .await?;
    Ok((failing, listed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_types_match_events_read() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    let admin = node.admin.as_str();
    let (_subscriber, listed) = one_dead_letter(&node).await?;
    let dead = &listed["deadLetters"][0];
    assert_eq!(dead["attributes"]["knativebrokerttl"], 255, "an integer, as stored: {dead}");
    assert_eq!(dead["attributes"]["id"], "e1");
    let read =
        sluice_ok(&["events", "read", "--stream", "deadletter/trigger/default/d", "-o", "json", "--admin", admin])
            .await?;
    let read: Value = serde_json::from_str(&read)?;
    let event = &read[0]["event"];
    assert_eq!(&dead["event"], event, "the same event as events read shows");
    let event_attributes: serde_json::Map<String, Value> = event
        .as_object()
        .map(|members| {
            members
                .iter()
                .filter(|(k, _)| *k != "data" && *k != "data_base64")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(dead["attributes"], Value::Object(event_attributes), "the same attributes, the same types");
    Ok(())
}

/// Knative's dispatcher sets `knativeerrorcode` as an integer (the CloudEvents SDK types an int extension as
/// Integer): in the JSON format, in `events read` and `dlq list` alike, it is a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_error_code_is_an_integer() -> anyhow::Result<()> {
    let (_root, node) = node_with_default_broker().await?;
    let (_subscriber, listed) = one_dead_letter(&node).await?;
    let dead = &listed["deadLetters"][0];
    assert_eq!(dead["event"]["knativeerrorcode"], 500, "{dead}");
    assert_eq!(dead["attributes"]["knativeerrorcode"], 500, "{dead}");
    Ok(())
}

/// `sluice dev` bound a Raft peer port (7070) that the README did not mention, though one node never has
/// peers: it now listens on its HTTP and admin ports only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_dev_with_one_node_binds_no_peer_port() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (http, admin) = (sluice_tests::free_addr(), sluice_tests::free_addr());
    let mut child = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["dev", "--http", &http, "--admin", &admin, "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("sluice dev has no pid"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).lines();
    let mut printed = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await?? {
        let ready = line.starts_with("Ctrl-C stops it");
        printed.push(line);
        if ready {
            break;
        }
    }
    assert!(printed.iter().any(|l| l.trim_start().starts_with("peer   none")), "{printed:?}");
    let listening = Command::new("ss").args(["-ltnpH"]).output()?;
    let owned = String::from_utf8_lossy(&listening.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(str::to_string)
        .collect::<Vec<_>>();
    let ports: Vec<&str> = owned.iter().filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert_eq!(ports.len(), 2, "only HTTP and admin: {owned:?}");
    assert!(ports.contains(&http.as_str()) && ports.contains(&admin.as_str()), "{ports:?} vs {http} {admin}");
    child.kill().await?;
    Ok(())
}

/// A `kill -9` of `sluice dev --nodes 3` left its three nodes running, holding their ports and data (seen as
/// stray `sluice node` processes after CI runs): each node now stops when its parent is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_sluice_dev_stops_its_nodes() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let base = sluice_tests::free_run(9);
    let base_port: u16 = base.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or_else(|| anyhow::anyhow!("port"))?;
    let [http, admin, peer] = [0u16, 3, 6].map(|offset| format!("127.0.0.1:{}", base_port + offset));
    let mut dev = tokio::process::Command::new(sluice_bin())
        .args(["dev", "--nodes", "3", "--http", &http, "--admin", &admin, "--peer-listen", &peer, "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let dev_pid = dev.id().ok_or_else(|| anyhow::anyhow!("sluice dev has no pid"))?;
    let mut lines = BufReader::new(dev.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).lines();
    let started = sluice_tests::wait_for_line(&mut lines, "sluice dev: 3 nodes", Duration::from_secs(120)).await?;
    assert!(started, "sluice dev printed that its nodes run");
    let nodes = children_of(dev_pid)?;
    assert_eq!(nodes.len(), 3, "sluice dev runs its three nodes as children: {nodes:?}");
    dev.start_kill()?;
    dev.wait().await?;
    let running = wait_until(Duration::from_secs(30), || {
        let nodes = nodes.clone();
        async move {
            let running: Vec<u32> = nodes.into_iter().filter(|pid| is_alive(*pid)).collect();
            Ok(running.is_empty().then_some(()))
        }
    })
    .await;
    let left: Vec<u32> = nodes.iter().copied().filter(|pid| is_alive(*pid)).collect();
    for pid in &left {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    assert!(running.is_ok(), "nodes still running 30 s after sluice dev was killed: {left:?}");
    Ok(())
}

/// The pids whose parent is `parent` (from `/proc/PID/stat`).
fn children_of(parent: u32) -> anyhow::Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command (which may hold spaces) start after its closing parenthesis.
        let after_command = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        if after_command.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent) {
            children.push(pid);
        }
    }
    Ok(children)
}

/// Whether `pid` is a running process (a zombie has exited; nobody may reap it in a container).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// Serves `body` at every path (`/missing` answers 404) over real HTTP, as a web server would serve a manifest.
async fn serve_manifest(body: &'static str) -> anyhow::Result<String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| async move {
                        let status = if request.uri().path() == "/missing" { 404 } else { 200 };
                        hyper::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// kubectl's `apply -R` (a directory's subdirectories too), `-n` (the namespace of objects naming none, and a
/// refusal for one naming another) and `-f URL` (a manifest fetched over HTTP; an HTTP error names the status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reads_directories_recursively_urls_and_takes_a_namespace() -> anyhow::Result<()> {
    let (root, node) = start_single_node(1, &[]).await?;
    let admin = node.admin.as_str();
    let broker = |name: &str| format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n");
    let manifests = root.path().join("manifests");
    std::fs::create_dir_all(manifests.join("nested"))?;
    write_file(&manifests, "top.yaml", &broker("top"))?;
    write_file(&manifests.join("nested"), "deep.yaml", &broker("deep"))?;
    let dir = manifests.display().to_string();

    let flat = sluice_ok(&["apply", "-f", &dir, "-n", "team", "--admin", admin]).await?;
    assert_eq!(lines(&flat), ["broker.eventing.knative.dev/top created"]);
    let recursive = sluice_ok(&["apply", "-R", "-f", &dir, "-n", "team", "--admin", admin]).await?;
    assert_eq!(
        lines(&recursive),
        ["broker.eventing.knative.dev/deep created", "broker.eventing.knative.dev/top unchanged"]
    );
    let in_team = sluice_ok(&["get", "brokers", "-n", "team", "-o", "name", "--admin", admin]).await?;
    assert_eq!(lines(&in_team), ["broker.eventing.knative.dev/deep", "broker.eventing.knative.dev/top"]);

    let elsewhere = write_file(
        root.path(),
        "elsewhere.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: x\n  namespace: other\n",
    )?;
    let (code, _, stderr) = sluice(&["apply", "-f", &elsewhere, "-n", "team", "--admin", admin]).await?;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("the namespace from the provided object \"other\" does not match the namespace \"team\""),
        "{stderr}"
    );

    let base =
        serve_manifest("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: fetched\n").await?;
    let url = format!("{base}/brokers.yaml");
    let fetched = sluice_ok(&["apply", "-f", &url, "--admin", admin]).await?;
    assert_eq!(lines(&fetched), ["broker.eventing.knative.dev/fetched created"]);
    sluice_ok(&["get", "broker", "fetched", "--admin", admin]).await?;
    let (code, _, stderr) = sluice(&["apply", "-f", &format!("{base}/missing"), "--admin", admin]).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("HTTP 404"), "{stderr}");
    let deleted = sluice_ok(&["delete", "-R", "-f", &dir, "-n", "team", "--admin", admin]).await?;
    assert_eq!(lines(&deleted).len(), 2, "{deleted}");
    Ok(())
}
