//! The crate's errors. Names show up in metrics and in Kubernetes Events ([`Error::metric_label`]).

/// What a reconcile can fail with. Each is tried again with a backoff (a controller's way), under a name that
/// says which it is: `SluiceUnavailable` may pass by itself; `SluiceDenied` (the controller's credentials) and
/// `SluiceFailed` (a fault in Sluice: a bug, storage) need someone. A refused object is not an error (its status
/// says why).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Sluice's admin API at {admin} is unavailable: {reason}")]
    SluiceUnavailable { admin: String, reason: String },
    #[error("Sluice's admin API at {admin} denied the controller: {reason} (its token, or its role)")]
    SluiceDenied { admin: String, reason: String },
    #[error("Sluice's admin API at {admin} failed: {reason}")]
    SluiceFailed { admin: String, reason: String },
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
            Error::SluiceDenied { .. } => "SluiceDenied",
            Error::SluiceFailed { .. } => "SluiceFailed",
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
