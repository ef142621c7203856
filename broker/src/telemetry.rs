//! The process-wide Prometheus recorder behind `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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
            handle
        })
        .clone()
}
