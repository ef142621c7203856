//! One node: appends acknowledged before `kill -9` are all there after a restart.

use std::collections::BTreeMap;

use sluice_tests::{AppendOutcome, append, check_stream, read_all, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill9_and_restart() -> anyhow::Result<()> {
    let (_root, mut node) = sluice_tests::start_single_node(2, &[]).await?;

    // Four concurrent writers, two streams, both partitions.
    let mut writers = Vec::new();
    for writer in 0..4u32 {
        let admin = node.admin.clone();
        writers.push(tokio::spawn(async move {
            let stream = format!("broker/default/b{}", writer % 2);
            let partition = writer % 2;
            let mut acked = Vec::new();
            for i in 0..100u32 {
                let payloads = vec![format!("w{writer}-{i}-a").into_bytes(), format!("w{writer}-{i}-b").into_bytes()];
                match append(&admin, &stream, partition, payloads.clone()).await {
                    AppendOutcome::Acked(offsets) => acked.extend(offsets.into_iter().zip(payloads)),
                    other => panic!("append failed on a healthy node: {other:?}"),
                }
            }
            (stream, partition, acked)
        }));
    }
    let mut expected: BTreeMap<(String, u32), BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for writer in writers {
        let (stream, partition, acked) = writer.await?;
        expected.entry((stream, partition)).or_default().extend(acked);
    }

    node.kill9();
    node.start()?;
    wait_ready(&node.http).await?;

    for ((stream, partition), acked) in &expected {
        let records = read_all(&node.admin, stream, *partition).await?;
        check_stream(&records, acked)?;
        assert_eq!(records.len(), acked.len(), "{stream}: exactly the acknowledged records");
        assert_eq!(acked.len(), 400);
    }

    // And it keeps going where it stopped.
    match append(&node.admin, "broker/default/b0", 0, vec![b"after-restart".to_vec()]).await {
        AppendOutcome::Acked(offsets) => assert_eq!(offsets, vec![400]),
        other => panic!("append after restart failed: {other:?}"),
    }
    Ok(())
}
