//! `sluice-fuzz --target cesql|event`: fuzzes one target for a time or a number of runs, keeping new inputs
//! in its corpus directory and writing findings (inputs that panicked) beside it. docs/security.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// `cesql` or `event`.
    #[arg(long)]
    target: String,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop after this many runs.
    #[arg(long, default_value_t = u64::MAX)]
    runs: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Corpus directory (read, and new inputs written): default fuzz/corpus/TARGET.
    #[arg(long)]
    corpus: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(target) = sluice_fuzz::by_name(&args.target) else {
        eprintln!("sluice-fuzz: --target must be cesql or event");
        return ExitCode::from(2);
    };
    // Panics are findings, reported below; the default hook would print each one as it happens.
    std::panic::set_hook(Box::new(|_| {}));
    let corpus_dir = args.corpus.unwrap_or_else(|| PathBuf::from("fuzz/corpus").join(target.name()));
    let corpus = sluice_fuzz::load_corpus(&corpus_dir);
    let started = std::time::Instant::now();
    let report = sluice_fuzz::fuzz(
        target.as_ref(),
        corpus,
        args.seed,
        args.runs,
        Some(Duration::from_secs(args.seconds)),
        Some(&corpus_dir),
    );
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}: {} runs in {seconds:.0} s ({:.0}/s), {} signatures, corpus {} (+{} kept), {} findings",
        target.name(),
        report.runs,
        report.runs as f64 / seconds.max(0.001),
        report.signatures,
        report.corpus,
        report.kept,
        report.findings.len()
    );
    let findings_dir = corpus_dir.with_file_name(format!("{}-findings", target.name()));
    for (input, panic) in &report.findings {
        let _ = std::fs::create_dir_all(&findings_dir);
        let name = findings_dir.join(format!("{:08x}", input.len() as u32 ^ panic.len() as u32));
        let _ = std::fs::write(&name, input);
        println!("finding {}: {panic}", name.display());
    }
    if report.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
