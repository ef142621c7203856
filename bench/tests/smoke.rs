//! CI smoke test of the comparison harness: `sluice-bench --mode compare --smoke` (Sluice on one node, tiny
//! rates, about 5 s) must exit 0 and print the table with a sluice row.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn compare_smoke_prints_a_sluice_row() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_sluice-bench"));
    // target/<profile>/sluice-bench → target/<profile>/sluice, unless SLUICE_BIN says otherwise.
    let sluice = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bench.parent().expect("target profile dir").join("sluice"));
    assert!(sluice.exists(), "no sluice binary at {} (build the workspace first)", sluice.display());
    let json = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(&bench)
        .args(["--mode", "compare", "--smoke", "--json"])
        .arg(json.path())
        .env("SLUICE_BIN", &sluice)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sluice-bench");
    let started = Instant::now();
    while child.try_wait().expect("polling sluice-bench").is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let output = child.wait_with_output().expect("sluice-bench output");
            panic!("sluice-bench --smoke ran over 30 s:\n{}", String::from_utf8_lossy(&output.stdout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("sluice-bench output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "sluice-bench failed: {:?}\n{stdout}\n{stderr}", output.status);
    let table = stdout.split_once("\nscenario ").map(|(_, t)| t).unwrap_or_else(|| panic!("no table:\n{stdout}"));
    let sluice_row = table
        .lines()
        .find(|l| l.starts_with("max publish→ack, 1 KiB") && l.contains("sluice-1"))
        .unwrap_or_else(|| panic!("no sluice-1 throughput row:\n{stdout}"));
    assert!(sluice_row.contains("ev/s") && sluice_row.contains("fsync before ack"), "{sluice_row}");
    // A probe whose first step failed prints "< N ev/s (first step failed)" in the same row.
    assert!(!table.contains("failed:") && !table.contains("step failed"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.path()).expect("json report")).expect("json");
    let rows = report["rows"].as_array().expect("rows");
    let max_rate = rows.iter().find(|r| {
        r["system"] == "sluice-1" && r["scenario"].as_str().is_some_and(|s| s.starts_with("max publish→ack, 1 KiB"))
    });
    assert!(max_rate.is_some_and(|r| r["value"].as_f64().is_some_and(|v| v > 0.0)), "no 1 KiB max rate: {report}");
}
