//! The crate's errors. Names show up in metrics and in Kubernetes Events ([`Error::metric_label`]).

/// What a reconcile can fail with. `SluiceUnavailable` and `Kube` are retried with backoff; a refused object
/// is not an error (its status says why), so nothing here is a bug reported as retryable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Sluice's admin API at {admin} is unavailable: {reason}")]
    SluiceUnavailable { admin: String, reason: String },
    /// Sluice answered with something that is not what its API promises (a bug on one side; not retried
    /// sooner than any other failure).
    #[error("Sluice's admin API at {admin} answered with {reason}")]
    SluiceBadReply { admin: String, reason: String },
    #[error("the Kubernetes API failed: {0}")]
    Kube(#[source] kube::Error),
    /// Boxed: the finalizer's error embeds this type.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("a {kind} without a name or a namespace cannot be reconciled")]
    IllegalObject { kind: String },
}

impl Error {
    /// A short label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::SluiceUnavailable { .. } => "SluiceUnavailable",
            Error::SluiceBadReply { .. } => "SluiceBadReply",
            Error::Kube(_) => "KubernetesApiError",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "FinalizerError",
            },
            Error::IllegalObject { .. } => "IllegalObject",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        Error::Kube(error)
    }
}
