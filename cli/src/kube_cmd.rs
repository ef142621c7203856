//! `sluice crds`: the CRDs of Knative's kinds as Sluice serves them, derived from Sluice's model types.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct CrdsArgs {
    /// Write one file per CRD into this directory (as `deploy/crds/` holds them) instead of printing them all.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

pub(crate) fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    let crds = sluice_kubernetes::crd::crds();
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in &crds {
                let path = dir.join(sluice_kubernetes::crd::crd_file_name(crd));
                let yaml = sluice_kubernetes::crd::crd_yaml(crd)?;
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                outln!("{}", path.display())?;
            }
        }
        None => {
            for (i, crd) in crds.iter().enumerate() {
                if i > 0 {
                    outln!("---")?;
                }
                out!("{}", sluice_kubernetes::crd::crd_yaml(crd)?)?;
            }
        }
    }
    Ok(())
}

/// `sluice kube-controller`: runs in the cluster (deploy/controller.yaml).
#[derive(Args, Debug)]
pub(crate) struct ControllerArgs {
    /// The Sluice cluster's admin API (the `sluice-admin` Service).
    #[arg(long, default_value = "sluice-admin:9090")]
    pub admin: String,
    /// The ingress Service's host, as event sources in the cluster reach it (Brokers' `status.address.url`).
    #[arg(long, default_value = "sluice-ingress.sluice-system.svc.cluster.local")]
    pub ingress_host: String,
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub metrics: String,
    /// The class of a Broker without the `eventing.knative.dev/broker.class` annotation.
    #[arg(long, default_value = sluice_kubernetes::reconcile::SLUICE_BROKER_CLASS)]
    pub default_broker_class: String,
    /// The cluster's DNS domain (core Services resolve to NAME.NAMESPACE.svc.DOMAIN).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The Lease that makes one controller replica the active one.
    #[arg(long, default_value = "sluice-controller")]
    pub lease_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "sluice-system")]
    pub lease_namespace: String,
    /// This replica's name in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_s: u64,
    /// The StatefulSet that runs the Sluice nodes, in the controller's namespace: members whose pods it no
    /// longer has are removed from the cluster ("" to never remove members).
    #[arg(long, default_value = "sluice")]
    pub statefulset: String,
    /// Also serve Knative Serving's Services, Configurations and Routes (only where Knative Serving is not
    /// installed: it would serve them too).
    #[arg(long)]
    pub serving: bool,
    /// Knative Eventing runs in this cluster too: leave its Channels, InMemoryChannels and their Subscriptions
    /// to it, and take only the EventPolicies that may apply to a Sluice Broker (docs/kubernetes.md).
    #[arg(long)]
    pub beside_knative_eventing: bool,
}

pub(crate) async fn kube_controller(args: ControllerArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;
    use kube::runtime::events::Reporter;
    use sluice_kubernetes::reconcile::ClusterAddressing;
    use sluice_kubernetes::{AdminApi, Context as ControllerContext, Settings, controller, lease};

    let identity = match args.identity.clone() {
        Some(identity) => identity,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string())?,
    };
    serve_metrics(&args.metrics).await?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in the cluster, or through $KUBECONFIG)")?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
    let duration = Duration::from_secs(args.lease_duration_s);
    let leader = metrics::gauge!("sluice_kube_leader");
    leader.set(0.0);
    tracing::info!(%identity, lease = %args.lease_name, "waiting to lead");
    let mut observer = lease::LeaseObserver::default();
    loop {
        let round = lease::hold(&leases, &args.lease_name, &identity, duration, &mut observer);
        match tokio::time::timeout(duration, round).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the Lease failed"),
            Err(_) => tracing::warn!("the API server did not answer about the Lease within {duration:?}"),
        }
        tokio::select! {
            _ = crate::shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(duration / 3) => {}
        }
    }
    leader.set(1.0);
    tracing::info!(%identity, "leading: reconciling Sluice-class Brokers and their objects");
    // Renews the Lease; returns when it could not be renewed within the renew deadline, two thirds of the lease
    // duration (client-go's 10 s of 15 s): another replica may take the Lease once the duration has passed, so
    // this one stops before that, even when a renewal hangs (the client has no read timeout).
    let renew_deadline = duration * 2 / 3;
    let renew = async {
        let mut held_at = Instant::now();
        loop {
            tokio::time::sleep(duration / 3).await;
            let left = renew_deadline.saturating_sub(held_at.elapsed());
            let round = lease::hold(&leases, &args.lease_name, &identity, duration, &mut observer);
            match tokio::time::timeout(left, round).await {
                Ok(Ok(true)) => held_at = Instant::now(),
                Ok(Ok(false)) => return anyhow::anyhow!("another replica holds the Lease {}", args.lease_name),
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the Lease failed"),
                Err(_) => tracing::warn!("renewing the Lease did not finish before the renew deadline"),
            }
            if held_at.elapsed() >= renew_deadline {
                return anyhow::anyhow!("the Lease {} could not be renewed for {renew_deadline:?}", args.lease_name);
            }
        }
    };
    let settings = Settings {
        default_broker_class: args.default_broker_class.clone(),
        addressing: ClusterAddressing { ingress_host: args.ingress_host.clone() },
        cluster_domain: args.cluster_domain.clone(),
        serve_knative_serving: args.serving,
        beside_knative_eventing: args.beside_knative_eventing,
        ..Settings::default()
    };
    let reporter = Reporter { controller: "sluice-controller".into(), instance: Some(identity.clone()) };
    // With the global credentials (`--token`, `--ca-cert`, `--client-cert`; or SLUICE_TOKEN, SLUICE_CA_CERT…), as
    // every other command reaches the admin API.
    let (channel, authorization) = crate::admin_channel::connect_lazy(&args.admin, Duration::from_secs(30))?;
    let admin_api = AdminApi::new(&args.admin, channel, authorization);
    let ctx = ControllerContext::new(client, Arc::new(admin_api), settings, reporter);
    let tidy = async {
        if args.statefulset.is_empty() {
            return std::future::pending().await;
        }
        loop {
            if let Err(e) = controller::tidy_members(&ctx, &args.lease_namespace, &args.statefulset).await {
                tracing::warn!(error = %e, "removing members the StatefulSet no longer has failed");
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    };
    tokio::select! {
        _ = controller::run(ctx.clone()) => Ok(()),
        () = tidy => Ok(()),
        lost = renew => {
            leader.set(0.0);
            Err(lost.context("stopped leading"))
        }
    }
}

/// `/metrics` (Prometheus) and `/healthz` on `addr`, in the background.
async fn serve_metrics(addr: &str) -> anyhow::Result<()> {
    let handle = sluice_broker::prometheus();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} (--metrics)"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}
