//! The process-wide Prometheus recorder behind `/metrics`.
//!
//! In: every `metrics::` call of the process; out: the text `/metrics` renders. The recorder keeps each
//! histogram's new samples in a queue until they are folded into its buckets, which it does only when asked:
//! at a scrape, or at an upkeep. A node nobody scrapes (most benchmarks, a dev node) grew by every sample,
//! several per event (docs/benchmarks.md, session 14), so a thread of its own runs the upkeep.
//! [`EventMetrics`] keeps the handles of Knative's per-event metrics, which ingress and dispatch update for
//! every request.

mod event_metrics;

pub use event_metrics::EventMetrics;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static UPKEEP: OnceLock<std::thread::JoinHandle<()>> = OnceLock::new();

/// Installs the recorder once per process and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0];
            let milliseconds = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0];
            let counts = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
            let bytes = [128.0, 1024.0, 8192.0, 65536.0, 262144.0, 1048576.0, 4194304.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &bytes))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_records".into()), &counts))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_requests".into()), &counts))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_writes".into()), &counts))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), &counts))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("event_dispatch_latencies".into()), &milliseconds)
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "metric buckets rejected; using summaries");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::debug!("a metrics recorder was already installed");
            }
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often the histograms' queued samples are folded into their buckets: the queue holds at most this
/// long's samples (at 100,000 samples/s, about 4 MB).
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The name of the upkeep thread (`/proc/PID/task/*/comm` shows it).
pub(crate) const UPKEEP_THREAD: &str = "metrics-upkeep";

/// A plain thread, not a task: the recorder may be installed before (or without) a Tokio runtime.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name(UPKEEP_THREAD.into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    });
    match spawned {
        Ok(thread) => {
            let _ = UPKEEP.set(thread);
        }
        Err(e) => {
            tracing::warn!(error = %e, "the metrics upkeep thread did not start; histogram samples queue until a scrape")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_the_recorder_starts_the_upkeep_thread() {
        let _handle = prometheus();
        let upkeep = UPKEEP.get().expect("the upkeep thread was started");
        assert_eq!(upkeep.thread().name(), Some(UPKEEP_THREAD));
        assert!(!upkeep.is_finished(), "the upkeep runs as long as the process");
    }
}
