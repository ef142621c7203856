use super::probes::probe_once;
use super::*;
use crate::runtime::{DEFAULT_PROBE_TIMEOUT, InstanceSpec, KillingProbe, ProbeRhythm, Readiness, Runtime};

/// Whether the process is gone (or a zombie nobody has reaped yet: it runs no more).
fn gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next()).is_some_and(|state| state == "Z")
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the tests' instances inherit: the test process's `PATH` only (to find `sh`, `sleep`, `python3`).
fn path_only() -> Vec<(String, String)> {
    environment::inherited(std::env::vars_os().filter(|(name, _)| name == "PATH"), &[])
}

/// An instance of `default/REVISION` running `argv` on the port `readiness` names (a free one for an exec
/// probe), with the default rhythm and a progress deadline long enough never to matter.
fn instance(id: u64, revision: &str, argv: &[&str], readiness: Readiness, logs: &crate::logs::LogHub) -> InstanceSpec {
    let port = match &readiness {
        Readiness::TcpConnect { port } | Readiness::HttpGet { port, .. } => *port,
        Readiness::Exec { .. } => free_port().expect("port"),
    };
    InstanceSpec {
        id,
        revision: format!("default/{revision}"),
        run: 1,
        object: Arc::new(serde_json::Value::Null),
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        env: Vec::new(),
        working_dir: None,
        port,
        fixed_port: false,
        readiness,
        readiness_rhythm: ProbeRhythm::default(),
        startup: None,
        liveness: None,
        progress_deadline: Duration::from_secs(600),
        log: logs.revision("default", revision),
    }
}

/// An instance that never becomes ready is stopped at the progress deadline, and its exit says why (the
/// revision then counts a failed start and shows the reason).
#[tokio::test]
async fn an_instance_not_ready_by_the_progress_deadline_is_stopped_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = LocalRuntime::new(dir.path().join("instances"), 8, path_only());
    let logs = crate::logs::LogHub::new(dir.path().join("logs"));
    let port = free_port().expect("port");
    let spec = InstanceSpec {
        progress_deadline: Duration::from_millis(300),
        ..instance(7, "never-00001", &["sleep", "300"], Readiness::TcpConnect { port }, &logs)
    };
    let (events, mut received) = mpsc::channel(8);
    let _instance = runtime.start(spec, events).expect("start");
    let event = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
    match event {
        Some(InstanceEvent::Exited { id, reason, signal, .. }) => {
            assert_eq!(id, 7);
            assert_eq!(reason.as_deref(), Some("ProgressDeadlineExceeded"));
            assert_eq!(signal, Some(9), "killed");
        }
        other => panic!("expected the instance to exit at its deadline: {other:?}"),
    }
}

/// Regression: the probe stopped at the first success, so an instance that stopped passing it kept its share
/// of the requests until it exited. It goes on at the probe's period: out of rotation after
/// `failureThreshold` failures in a row, back after `successThreshold` successes.
#[tokio::test]
async fn a_ready_instance_whose_probe_fails_leaves_rotation_and_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = LocalRuntime::new(dir.path().join("instances"), 8, path_only());
    let logs = crate::logs::LogHub::new(dir.path().join("logs"));
    let healthy = dir.path().join("healthy");
    std::fs::write(&healthy, b"").expect("write");
    let probe = Readiness::Exec { argv: vec!["test".into(), "-f".into(), healthy.display().to_string()] };
    let spec = InstanceSpec {
        readiness_rhythm: ProbeRhythm {
            period: Some(Duration::from_millis(20)),
            failure_threshold: 2,
            success_threshold: 1,
            ..ProbeRhythm::default()
        },
        ..instance(3, "flaky-00001", &["sleep", "300"], probe, &logs)
    };
    let (events, mut received) = mpsc::channel(8);
    let instance = runtime.start(spec, events).expect("start");
    let mut next = async || tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
    assert!(matches!(next().await, Some(InstanceEvent::Ready { id: 3, .. })));
    std::fs::remove_file(&healthy).expect("remove");
    assert_eq!(next().await, Some(InstanceEvent::NotReady { id: 3 }));
    std::fs::write(&healthy, b"").expect("write");
    assert!(matches!(next().await, Some(InstanceEvent::Ready { id: 3, .. })));
    instance.stop(Duration::from_secs(10)).await;
    assert!(matches!(next().await, Some(InstanceEvent::Exited { id: 3, .. })), "then its exit");
}

/// A liveness probe that fails `failureThreshold` times in a row stops a ready instance (SIGTERM, as the
/// kubelet restarts a container), its exit saying why; the revision then replaces it. Regression: the
/// instance stayed in rotation until it exited, and a request sent to it meanwhile got a 502 (t90 in CI).
#[tokio::test]
async fn an_instance_whose_liveness_probe_fails_is_stopped_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = LocalRuntime::new(dir.path().join("instances"), 8, path_only());
    let logs = crate::logs::LogHub::new(dir.path().join("logs"));
    let alive = dir.path().join("alive");
    std::fs::write(&alive, b"").expect("write");
    let liveness = KillingProbe {
        check: Readiness::Exec { argv: vec!["test".into(), "-f".into(), alive.display().to_string()] },
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(20),
        timeout: DEFAULT_PROBE_TIMEOUT,
        failure_threshold: 2,
    };
    let ready = Readiness::Exec { argv: vec!["true".into()] };
    let spec = InstanceSpec { liveness: Some(liveness), ..instance(4, "sick-00001", &["sleep", "300"], ready, &logs) };
    let (events, mut received) = mpsc::channel(8);
    let _instance = runtime.start(spec, events).expect("start");
    let mut next = async || tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
    assert!(matches!(next().await, Some(InstanceEvent::Ready { id: 4, .. })));
    std::fs::remove_file(&alive).expect("remove");
    assert_eq!(next().await, Some(InstanceEvent::NotReady { id: 4 }), "out of rotation first");
    match next().await {
        Some(InstanceEvent::Exited { id: 4, reason, signal, .. }) => {
            assert_eq!(reason.as_deref(), Some(super::super::liveness::LIVENESS_PROBE_FAILED));
            assert_eq!(signal, Some(15), "asked to stop (SIGTERM) first");
        }
        other => panic!("expected the instance to be stopped: {other:?}"),
    }
}

/// Readiness is not probed before the startup probe passes, and a startup probe that fails
/// `failureThreshold` times in a row stops the instance, saying why.
#[tokio::test]
async fn readiness_waits_for_the_startup_probe_which_stops_an_instance_that_never_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = LocalRuntime::new(dir.path().join("instances"), 8, path_only());
    let logs = crate::logs::LogHub::new(dir.path().join("logs"));
    let (started, runs) = (dir.path().join("started"), dir.path().join("runs"));
    let startup = |failure_threshold| KillingProbe {
        check: Readiness::Exec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo run >> '{}'; test -f '{}'", runs.display(), started.display()),
            ],
        },
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(20),
        timeout: DEFAULT_PROBE_TIMEOUT,
        failure_threshold,
    };
    let ready = || Readiness::Exec { argv: vec!["true".into()] };
    let spec =
        InstanceSpec { startup: Some(startup(1_000)), ..instance(5, "slow-00001", &["sleep", "300"], ready(), &logs) };
    let (events, mut received) = mpsc::channel(8);
    let _instance = runtime.start(spec, events).expect("start");
    let run_count = || std::fs::read_to_string(&runs).map(|r| r.lines().count()).unwrap_or(0);
    wait_for("the startup probe ran three times", || run_count() >= 3).await;
    assert!(received.try_recv().is_err(), "not ready while the startup probe fails (its readiness passes)");
    std::fs::write(&started, b"").expect("write");
    let event = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
    assert!(matches!(event, Some(InstanceEvent::Ready { id: 5, .. })), "{event:?}");

    std::fs::remove_file(&started).expect("remove");
    let spec =
        InstanceSpec { startup: Some(startup(2)), ..instance(6, "never-00001", &["sleep", "300"], ready(), &logs) };
    let (events, mut received) = mpsc::channel(8);
    let _instance = runtime.start(spec, events).expect("start");
    let event = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
    match event {
        Some(InstanceEvent::Exited { id: 6, reason, .. }) => {
            assert_eq!(reason.as_deref(), Some(super::super::liveness::STARTUP_PROBE_FAILED));
        }
        other => panic!("expected the instance to be stopped, never ready: {other:?}"),
    }
}

/// Regression: an exec probe ran with the node's environment and directory, so a probe such as
/// `curl localhost:$PORT/healthz` never passed.
#[tokio::test]
async fn an_exec_probe_runs_with_the_instances_environment_and_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = std::fs::canonicalize(dir.path()).expect("canonical");
    let probe = |script: &str| Readiness::Exec { argv: vec!["sh".into(), "-c".into(), script.into()] };
    let env = ProbeEnv {
        vars: vec![("PORT".into(), "4321".into()), ("TARGET".into(), "x".into())],
        working_dir: Some(workdir.clone()),
        rhythm: ProbeRhythm::default(),
    };
    let script =
        format!("test \"$PORT\" = 4321 && test \"$TARGET\" = x && test \"$(pwd -P)\" = '{}'", workdir.display());
    assert!(probe_once(&probe(&script), &env, DEFAULT_PROBE_TIMEOUT).await, "{script}");
    assert!(!probe_once(&probe("test \"$PORT\" = 1"), &env, DEFAULT_PROBE_TIMEOUT).await, "a failing probe fails");
}

/// Regression: when an instance's first process exited, what it had started lived on (a child that ignored
/// SIGTERM, as `npm start` leaves `node`), holding the port the next instance needed.
#[tokio::test]
async fn what_an_instance_started_goes_with_it_even_when_it_ignored_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = LocalRuntime::new(dir.path().join("instances"), 8, path_only());
    let logs = crate::logs::LogHub::new(dir.path().join("logs"));
    let orphan_file = dir.path().join("orphan.pid");
    let script = format!("trap '' TERM; sleep 300 & echo $! > {}; trap - TERM; exec sleep 299", orphan_file.display());
    let port = free_port().expect("port");
    let spec = instance(1, "hello-00001", &["sh", "-c", &script], Readiness::TcpConnect { port }, &logs);
    let (events, _events) = mpsc::channel(8);
    let instance = runtime.start(spec, events).expect("start");
    let orphan_pid = || std::fs::read_to_string(&orphan_file).ok().and_then(|pid| pid.trim().parse::<u32>().ok());
    wait_for("the child started", || orphan_pid().is_some()).await;
    let orphan = orphan_pid().expect("pid");
    assert!(!gone(orphan), "the child runs");
    instance.stop(Duration::from_secs(10)).await;
    wait_for("the child that ignored SIGTERM is killed with its instance", || gone(orphan)).await;
}

/// Regression: a node restarted after a crash killed a recorded instance's process group only while its leader
/// lived; a leader that had died meanwhile (its output pipe closed with the node) left its workers running,
/// holding the port, and their record was forgotten. The group's remaining processes are killed too.
#[tokio::test]
async fn a_recorded_group_whose_leader_died_is_killed_at_the_next_start() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let instances = dir.path().join("instances");
    std::fs::create_dir_all(&instances).expect("dir");
    let worker_file = dir.path().join("worker.pid");
    let script = format!("sleep 300 & echo $! > {}; read line", worker_file.display());
    let mut leader = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn");
    let leader_pid = leader.id();
    // Recorded as the runtime records an instance: its pid, and its start time.
    let started = process_start_time(leader_pid).expect("the leader runs");
    std::fs::write(instances.join(leader_pid.to_string()), &started).expect("record");
    let worker = || std::fs::read_to_string(&worker_file).ok().and_then(|pid| pid.trim().parse::<u32>().ok());
    wait_for("the worker started", || worker().is_some()).await;
    let worker = worker().expect("pid");
    drop(leader.stdin.take());
    leader.wait().expect("the leader exits");
    assert!(!gone(worker), "the worker outlives its leader");
    assert_eq!(kill_recorded_instances(&instances), 1, "the group is killed");
    wait_for("the worker is killed with its group", || gone(worker)).await;
    assert_eq!(std::fs::read_dir(&instances).expect("dir").count(), 0, "the record is forgotten");
}

/// The process group and start time are read past a command name holding spaces and parentheses.
#[test]
fn a_stat_line_gives_its_group_and_start_time() {
    let stat = "4242 (a (weird) name) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67";
    assert_eq!(stat_group_and_start(stat), Some((4240, 987_654)));
    assert_eq!(stat_group_and_start("garbage"), None);
}

/// At most `--max-local-instances` run at once. A fixed `containerPort` is held from an instance's start until
/// its exit: another instance of the same revision waits for it, and another revision's instance (a rollout)
/// gets a port of its own in `PORT`, so that its readiness probe cannot pass on the old revision's process (it
/// did, when only the same revision's instances were looked at). A port another program listens on is
/// refused.
#[tokio::test]
async fn instances_share_the_nodes_slots_and_fixed_ports() {
    const LISTEN: &str = "import os, socket, time\ns = socket.socket()\n\
                          s.bind(('127.0.0.1', int(os.environ['PORT'])))\ns.listen()\ntime.sleep(300)";
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = LocalRuntime::new(dir.path().join("instances"), 2, path_only());
    let logs = crate::logs::LogHub::new(dir.path().join("logs"));
    let app = |id: u64, revision: &str, port: u16, fixed_port: bool| InstanceSpec {
        fixed_port,
        ..instance(id, revision, &["python3", "-c", LISTEN], Readiness::TcpConnect { port }, &logs)
    };
    let running = || runtime.slots.lock().map(|slots| slots.running).unwrap_or(usize::MAX);
    let (events, mut received) = mpsc::channel(16);
    let mut ready_at = async |id: u64| -> SocketAddr {
        let ready = async {
            loop {
                match received.recv().await {
                    Some(InstanceEvent::Ready { id: got, addr }) if got == id => return addr,
                    Some(_) => {}
                    None => panic!("the events ended"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), ready).await.expect("ready within 20 s")
    };
    let port = free_port().expect("port");
    let first = runtime.start(app(1, "a-00001", port, true), events.clone()).expect("start");
    assert_eq!(ready_at(1).await.port(), port, "on its containerPort");
    let waits = runtime.start(app(2, "a-00001", port, true), events.clone()).err();
    assert!(matches!(waits, Some(ServingError::NoRoom { .. })), "the same revision waits: {waits:?}");
    let second = runtime.start(app(3, "b-00001", port, true), events.clone()).expect("another revision starts");
    assert_ne!(ready_at(3).await.port(), port, "a port of its own, not the first one's process");
    let full = runtime.start(app(4, "c-00001", free_port().expect("port"), false), events.clone()).err();
    assert!(matches!(full, Some(ServingError::NoRoom { .. })), "two at most: {full:?}");

    first.stop(Duration::from_secs(10)).await;
    wait_for("the first instance's slot is given back", || running() == 1).await;
    let third = runtime.start(app(5, "a-00001", port, true), events.clone()).expect("the port is free again");
    second.stop(Duration::from_secs(10)).await;
    wait_for("the second instance's slot is given back", || running() == 1).await;

    let foreign = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let foreign_port = foreign.local_addr().expect("address").port();
    // A port something Sluice did not start listens on (here as the node's own listener would): a port of its
    // own, which it holds no claim on (regression: the start failed).
    let moved = runtime.start(app(6, "d-00001", foreign_port, true), events.clone()).expect("a port of its own");
    assert_ne!(ready_at(6).await.port(), foreign_port, "not on the port another program listens on");
    assert_eq!(running(), 2);
    moved.stop(Duration::from_secs(10)).await;
    wait_for("the moved instance's slot is given back", || running() == 1).await;
    let again = runtime.start(app(7, "d-00001", foreign_port, true), events.clone()).expect("again");
    assert_ne!(ready_at(7).await.port(), foreign_port, "still its own: the port was never held for it");
    drop(foreign);
    again.stop(Duration::from_secs(10)).await;
    third.stop(Duration::from_secs(10)).await;
    wait_for("every slot is given back", || running() == 0).await;
}

fn split(chunks: &[&[u8]]) -> Vec<String> {
    let mut splitter = LineSplitter::default();
    let mut lines: Vec<String> = chunks.iter().flat_map(|chunk| splitter.push(chunk)).collect();
    lines.extend(splitter.finish());
    lines
}

#[test]
fn output_is_split_into_lines_whatever_the_chunks() {
    assert_eq!(split(&[b"a\nbc\n"]), ["a", "bc"]);
    assert_eq!(split(&[b"a", b"b\nc", b"d\n"]), ["ab", "cd"]);
    assert_eq!(split(&[b"a\r\n\nlast"]), ["a", "", "last"], "CRLF, an empty line, no final newline");
    assert!(split(&[b""]).is_empty());
}

#[test]
fn invalid_utf8_is_replaced_and_reading_goes_on() {
    assert_eq!(split(&[b"ok \xff\xfe bytes\n", b"next\n"]), ["ok \u{fffd}\u{fffd} bytes", "next"]);
}

#[test]
fn a_long_line_is_cut_and_its_rest_skipped_without_holding_it() {
    let long = vec![b'x'; MAX_LINE_BYTES * 3];
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    for chunk in long.chunks(1000) {
        lines.extend(splitter.push(chunk));
        assert!(splitter.line.len() <= MAX_LINE_BYTES, "never more than one line's limit held");
    }
    lines.extend(splitter.push(b"\nafter\n"));
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].len(), MAX_LINE_BYTES);
    assert_eq!(lines[1], "after");
    let exact = vec![b'y'; MAX_LINE_BYTES];
    assert_eq!(split(&[&exact, b"\nz\n"]), [String::from_utf8(exact.clone()).unwrap_or_default(), "z".into()]);
}

/// Regression: an instance ran with the whole of the node's environment (its credentials, its tokens). It
/// gets what it inherits, then its own variables, which win over the inherited ones; nothing else.
#[tokio::test]
async fn an_instance_gets_only_its_inherited_variables_and_its_own() {
    let node_only: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| !environment::INHERITED_BY_DEFAULT.contains(&name.as_str()))
        .collect();
    assert!(!node_only.is_empty(), "the test process has variables an instance must not get");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inherited = path_only();
    inherited.push(("TARGET".into(), "the node's".into()));
    inherited.push(("EXTRA".into(), "passed".into()));
    let runtime = LocalRuntime::new(dir.path().join("instances"), 8, inherited);
    let logs = crate::logs::LogHub::new(dir.path().join("logs"));
    let dump = dir.path().join("env");
    let script = format!("env > {}.tmp && mv {0}.tmp {0}; exec sleep 300", dump.display());
    let spec = InstanceSpec {
        env: vec![("TARGET".into(), "its own".into())],
        ..instance(1, "env-00001", &["sh", "-c", &script], Readiness::Exec { argv: vec!["true".into()] }, &logs)
    };
    let (events, _events) = mpsc::channel(8);
    let instance = runtime.start(spec, events).expect("start");
    wait_for("the instance wrote its environment", || dump.exists()).await;
    let written = std::fs::read_to_string(&dump).expect("read");
    instance.stop(Duration::from_secs(10)).await;
    let vars: std::collections::BTreeMap<&str, &str> = written.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("TARGET"), Some(&"its own"), "its own variable wins: {vars:?}");
    assert_eq!(vars.get("EXTRA"), Some(&"passed"), "{vars:?}");
    assert!(vars.contains_key("PORT") && vars.contains_key("PATH"), "{vars:?}");
    // What the shell sets itself besides.
    let expected = ["TARGET", "EXTRA", "PORT", "PATH", "PWD", "SHLVL", "_", "OLDPWD"];
    let unexpected: Vec<&&str> = vars.keys().filter(|name| !expected.contains(name)).collect();
    assert!(unexpected.is_empty(), "the node's variables reached the instance: {unexpected:?}");
}

/// Regression: an instance without a `workingDir` ran in the node's own directory, and `python3 -m http.server`
/// (docs/serving.md's example) served the node's data dir from there, its signing keys included. It runs in an
/// empty directory of its own, removed once it has exited.
#[tokio::test]
async fn an_instance_without_a_working_dir_runs_in_an_empty_one_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    let runtime = LocalRuntime::new(root.join("instances"), 8, path_only());
    let logs = crate::logs::LogHub::new(root.join("logs"));
    let report = root.join("cwd.txt");
    let script = format!("echo \"$(pwd -P) $(ls -A | wc -l)\" > {}; exec sleep 300", report.display());
    let port = free_port().expect("port");
    let spec = instance(1, "hello-00001", &["sh", "-c", &script], Readiness::TcpConnect { port }, &logs);
    let (events, _events) = mpsc::channel(8);
    let instance = runtime.start(spec, events).expect("start");
    let written = || std::fs::read_to_string(&report).ok().filter(|text| text.ends_with('\n'));
    wait_for("the instance wrote where it runs", || written().is_some()).await;
    let text = written().expect("report");
    let (cwd, entries) = text.trim_end().rsplit_once(' ').expect("two fields");
    let cwd = PathBuf::from(cwd);
    assert_eq!(entries.trim(), "0", "its directory starts empty");
    let node_dir = std::fs::canonicalize(std::env::current_dir().expect("cwd")).expect("canonical");
    assert_ne!(cwd, node_dir, "not the node's directory");
    assert!(cwd.starts_with(&root), "under the runtime's own directory: {}", cwd.display());
    instance.stop(Duration::from_secs(10)).await;
    wait_for("its directory is removed once it has exited", || !cwd.exists()).await;
}
