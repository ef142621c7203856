//! Starting one instance of a revision: its spec from the run, the runtime's start, and what a start that did
//! not happen does to the revision (a failure recorded, or a start deferred while the node has no room).

use super::*;

/// Starts one instance; false when it could not be started (recorded as a failure).
pub(super) fn start_instance(
    revision: &Arc<RevisionHandle>,
    env: &RevisionEnv,
    events: &mpsc::Sender<InstanceEvent>,
    instances: &mut Instances,
) -> bool {
    instances.next_id += 1;
    let id = instances.next_id;
    let run = &revision.run;
    let port = match (run.port, env.runtime.kind()) {
        (Some(port), _) => Ok(port),
        // Each instance listens on a port of its own on this machine; a pod has its own address.
        (None, ServingRuntime::Local) => free_port(),
        (None, ServingRuntime::Kubernetes) => Ok(DEFAULT_CONTAINER_PORT),
    };
    let started = port.and_then(|port| {
        let readiness = run.readiness.on_port(port);
        let spec = InstanceSpec {
            id,
            revision: revision.key(),
            run: revision.run_id.generation,
            object: run.object.clone(),
            argv: run.argv.clone(),
            env: run.env.clone(),
            working_dir: run.working_dir.clone(),
            port,
            fixed_port: run.port.is_some(),
            readiness,
            readiness_rhythm: run.readiness_rhythm,
            startup: run.startup.as_ref().map(|probe| probe.on_port(port)),
            liveness: run.liveness.as_ref().map(|probe| probe.on_port(port)),
            progress_deadline: run.progress_deadline.unwrap_or(env.progress_deadline),
            log: env.logs.revision(&run.namespace, &run.name),
        };
        env.runtime.start(spec, events.clone())
    });
    match started {
        Ok(instance) => {
            metrics::counter!("sluice_serving_instance_starts_total", "revision" => revision.key()).increment(1);
            if let Ok(mut state) = revision.state.lock() {
                state.gate.add(id);
                if let Some(reason) = state.start_deferred.take() {
                    tracing::info!(revision = %revision.key(), %reason, "an instance started after waiting for room");
                }
            }
            instances.running.insert(id, instance);
            true
        }
        Err(ServingError::NoRoom { reason, .. }) => {
            metrics::counter!("sluice_serving_instance_starts_deferred_total").increment(1);
            // Said once per wait (at warn: requests to the revision are held meanwhile, and answered 503 with the
            // reason when their time runs out); tried again at every turn of the revision. Regression: only a debug
            // line said why requests waited to their timeout.
            let first =
                revision.state.lock().is_ok_and(|mut state| state.start_deferred.replace(reason.clone()).is_none());
            if first {
                tracing::warn!(revision = %revision.key(), %reason, "an instance cannot start on this node yet; its requests wait for room");
            } else {
                tracing::debug!(revision = %revision.key(), %reason, "instance start deferred");
            }
            false
        }
        Err(e) => {
            tracing::warn!(revision = %revision.key(), error = %e, "instance not started");
            // What the runtime says of a start it could not make (no output of the app's in it).
            fail(revision, instances, "RunContainerError".into(), e.to_string(), e.to_string());
            publish_capacity(revision, env);
            false
        }
    }
}
