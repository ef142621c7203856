//! Fuzzing on the stable toolchain (cargo-fuzz and libFuzzer need nightly): inputs in, a report out.
//!
//! A target takes bytes and says what happened as an outcome signature (which error, which value type);
//! a panic is a finding. The loop draws an input from the corpus, mutates it (byte flips, inserts, deletes,
//! splices with another input, and tokens of the target's grammar), runs it, and keeps it when its signature
//! is new: outcome novelty stands in for coverage, which would need instrumentation. Everything is seeded:
//! a run is repeatable from its seed and corpus. `targets` holds the two targets and their oracles.

pub mod mutate;
pub mod targets;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

pub use mutate::Rng;
pub use targets::{Target, by_name};

/// Longest input tried: beyond this the targets refuse by their own limits anyway.
pub const MAX_INPUT_BYTES: usize = 64 << 10;
/// Inputs kept in memory and on disk at most (the oldest stay; a run that keeps finding new outcomes stops
/// adding at this bound rather than filling the disk).
pub const MAX_CORPUS: usize = 4_096;
/// Longest input kept in the corpus.
pub const MAX_KEPT_BYTES: usize = 4 << 10;

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub runs: u64,
    pub corpus: usize,
    pub kept: usize,
    pub signatures: usize,
    /// Inputs that panicked, with the panic's message.
    pub findings: Vec<(Vec<u8>, String)>,
}

/// Loads every file of `dir` as an input (missing dir: none).
pub fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).ok()?)))
        .collect();
    inputs.sort();
    inputs.into_iter().map(|(_, bytes)| bytes).collect()
}

fn file_name(input: &[u8]) -> String {
    // FNV-1a: a stable name, so the same input is never stored twice.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// Runs one input, turning a panic into a finding.
pub fn run_one(target: &dyn Target, input: &[u8]) -> Result<String, String> {
    catch_unwind(AssertUnwindSafe(|| target.run(input))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// Fuzzes `target` until `budget` runs or `deadline`, whichever comes first, starting from its seeds and
/// `corpus`; new inputs are written to `keep` when given.
pub fn fuzz(
    target: &dyn Target,
    corpus: Vec<Vec<u8>>,
    seed: u64,
    budget: u64,
    deadline: Option<Duration>,
    keep: Option<&Path>,
) -> Report {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut inputs: Vec<Vec<u8>> = target.seeds();
    inputs.extend(corpus);
    let mut signatures = BTreeSet::new();
    let mut report = Report::default();
    for input in inputs.clone() {
        report.runs += 1;
        match run_one(target, &input) {
            Ok(signature) => {
                signatures.insert(signature);
            }
            Err(panic) => report.findings.push((input, panic)),
        }
    }
    let dictionary = target.dictionary();
    while report.runs < budget && deadline.is_none_or(|d| started.elapsed() < d) {
        let parent = &inputs[rng.below(inputs.len())];
        let other = &inputs[rng.below(inputs.len())];
        let child = mutate::mutate(&mut rng, parent, other, &dictionary, MAX_INPUT_BYTES);
        report.runs += 1;
        match run_one(target, &child) {
            Ok(signature) => {
                if signatures.insert(signature) && inputs.len() < MAX_CORPUS && child.len() <= MAX_KEPT_BYTES {
                    if let Some(dir) = keep {
                        let _ = std::fs::create_dir_all(dir);
                        let _ = std::fs::write(dir.join(file_name(&child)), &child);
                    }
                    report.kept += 1;
                    inputs.push(child);
                }
            }
            Err(panic) => report.findings.push((child, panic)),
        }
    }
    report.corpus = inputs.len();
    report.signatures = signatures.len();
    report
}
