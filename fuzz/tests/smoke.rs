//! The CI smoke of the fuzzers: the kept corpus replayed and a few thousand seeded mutations per target, no
//! finding. The long runs are by hand (`scripts/fuzz.sh`, docs/security.md).

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

#[test]
fn corpus_and_seeded_mutations_find_nothing() {
    for name in ["cesql", "event"] {
        let target = sluice_fuzz::by_name(name).expect("target");
        let corpus = sluice_fuzz::load_corpus(&corpus_dir(name));
        let report = sluice_fuzz::fuzz(target.as_ref(), corpus, 42, 5_000, None, None);
        assert!(report.runs >= 5_000, "{name}: {report:?}");
        assert!(report.signatures > 10, "{name}: the mutations reach many outcomes: {report:?}");
        let findings: Vec<String> = report
            .findings
            .iter()
            .map(|(input, panic)| format!("{panic}: {:?}", String::from_utf8_lossy(input)))
            .collect();
        assert!(findings.is_empty(), "{name}: {findings:#?}");
    }
}
