//! The Sluice cluster as the controller sees it: apply, read and delete resource objects through the admin
//! Resources API (gRPC). The metadata group behind it stays the data plane's source of truth.

use futures::future::BoxFuture;
use serde_json::Value;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{ApplyResourceRequest, RemoveNodeRequest, ResourceRef, StatusRequest};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::error::Error;

/// Why Sluice did not take an object: it is invalid (the message names the fields), or it conflicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
}

/// Sluice's resources, as the controller uses them.
pub trait SluiceApi: Send + Sync + 'static {
    /// Creates or replaces an object. `Ok(Err(refusal))`: Sluice refused it (not retried until it changes).
    fn apply<'a>(&'a self, object: &'a Value) -> BoxFuture<'a, Result<Result<(), Refusal>, Error>>;
    /// The object as Sluice keeps it, with its derived status; `None` if Sluice does not have it.
    fn get<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, Error>>;
    /// Removes an object; one Sluice does not have is already removed.
    fn delete<'a>(&'a self, kind: &'a str, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// The cluster's members (node ids); empty before the cluster is initialised.
    fn members(&self) -> BoxFuture<'_, Result<Vec<u64>, Error>>;
    /// Removes a member from every group.
    fn remove_member(&self, node_id: u64) -> BoxFuture<'_, Result<(), Error>>;
}

/// The admin API of a Sluice cluster (the `sluice-admin` Service): a channel (plaintext or TLS, connected on
/// first use) and the bearer token sent with each call, when the nodes ask for one.
pub struct AdminApi {
    admin: String,
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
}

impl AdminApi {
    /// Over `channel` (the caller chose plaintext or TLS), sending `authorization` (`Bearer TOKEN`) with each
    /// call when given.
    pub fn new(admin: &str, channel: Channel, authorization: Option<MetadataValue<Ascii>>) -> AdminApi {
        AdminApi { admin: admin.to_string(), channel, authorization }
    }

    fn client(&self) -> ResourcesClient<Channel> {
        ResourcesClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// `message` as a call, with the token.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        request
    }

    fn unavailable(&self, status: &tonic::Status) -> Error {
        failure_of(&self.admin, status)
    }
}

/// What a failed call says, by its code. Regression: every failure was "unavailable", a bug in Sluice and a
/// wrong token included.
fn failure_of(admin: &str, status: &tonic::Status) -> Error {
    let (admin, reason) = (admin.to_string(), format!("{}: {}", status.code(), status.message()));
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Error::SluiceDenied { admin, reason },
        Code::Internal | Code::DataLoss | Code::Unimplemented | Code::OutOfRange | Code::InvalidArgument => {
            Error::SluiceFailed { admin, reason }
        }
        _ => Error::SluiceUnavailable { admin, reason },
    }
}

fn reference(kind: &str, namespace: &str, name: &str) -> ResourceRef {
    ResourceRef { kind: kind.into(), namespace: namespace.into(), name: name.into() }
}

impl SluiceApi for AdminApi {
    fn apply<'a>(&'a self, object: &'a Value) -> BoxFuture<'a, Result<Result<(), Refusal>, Error>> {
        Box::pin(async move {
            let request = ApplyResourceRequest { object_json: object.to_string(), dry_run: false };
            match self.client().apply(self.request(request)).await {
                Ok(_) => Ok(Ok(())),
                Err(status) if is_refusal(&status) => Ok(Err(Refusal { message: status.message().to_string() })),
                Err(status) => Err(self.unavailable(&status)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, Error>> {
        Box::pin(async move {
            match self.client().get(self.request(reference(kind, namespace, name))).await {
                Ok(reply) => {
                    serde_json::from_str(&reply.into_inner().object_json).map(Some).map_err(|e| Error::SluiceBadReply {
                        admin: self.admin.clone(),
                        reason: format!("an object that is not JSON: {e}"),
                    })
                }
                Err(status) if status.code() == Code::NotFound => Ok(None),
                Err(status) => Err(self.unavailable(&status)),
            }
        })
    }

    fn delete<'a>(&'a self, kind: &'a str, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match self.client().delete(self.request(reference(kind, namespace, name))).await {
                Ok(_) => Ok(()),
                Err(status) if status.code() == Code::NotFound => Ok(()),
                Err(status) => Err(self.unavailable(&status)),
            }
        })
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<u64>, Error>> {
        Box::pin(async move {
            let status = ClusterClient::new(self.channel.clone())
                .status(self.request(StatusRequest {}))
                .await
                .map_err(|status| self.unavailable(&status))?
                .into_inner();
            Ok(if status.initialized { status.members.iter().map(|m| m.node_id).collect() } else { Vec::new() })
        })
    }

    fn remove_member(&self, node_id: u64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            match ClusterClient::new(self.channel.clone())
                .remove_node(self.request(RemoveNodeRequest { node_id }))
                .await
            {
                Ok(_) => Ok(()),
                Err(status) if status.code() == Code::NotFound => Ok(()),
                Err(status) => Err(self.unavailable(&status)),
            }
        })
    }
}

/// Whether Sluice refused the object itself (invalid, or not allowed as it is), rather than could not take it
/// now. FAILED_PRECONDITION also carries "no leader" and "not initialised" (an election, a cluster starting):
/// those pass, so they are retried rather than marked refused until the object changes.
fn is_refusal(status: &tonic::Status) -> bool {
    use sluice_proto::errors::{ErrorCode, error_detail};
    match status.code() {
        // OUT_OF_RANGE: the object is larger than Sluice takes.
        Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => true,
        Code::FailedPrecondition => {
            let passing = [ErrorCode::NoLeader as u32, ErrorCode::NotInitialized as u32];
            !error_detail(status).is_some_and(|detail| passing.contains(&detail.code))
        }
        _ => false,
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use sluice_proto::errors::{ErrorCode, error_status};

    /// Regression: an apply during a metadata election (NO_LEADER, a FAILED_PRECONDITION) marked the object
    /// refused, and it stayed so until someone edited it.
    #[test]
    fn only_the_objects_own_faults_are_refusals() {
        assert!(is_refusal(&error_status(ErrorCode::InvalidResource, "spec.x: bad")));
        assert!(is_refusal(&error_status(ErrorCode::AlreadyInitialized, "taken")));
        assert!(is_refusal(&error_status(ErrorCode::ConsumerNotDispatchable, "no broker")));
        assert!(!is_refusal(&error_status(ErrorCode::NoLeader, "election")));
        assert!(!is_refusal(&error_status(ErrorCode::NotInitialized, "starting")));
        assert!(is_refusal(&tonic::Status::out_of_range("the object is larger than 4 MiB")));
    }

    #[test]
    fn a_failure_is_named_by_what_it_needs() {
        let cases = [
            (tonic::Status::unavailable("connection refused"), "SluiceUnavailable"),
            (tonic::Status::deadline_exceeded("slow"), "SluiceUnavailable"),
            (error_status(ErrorCode::NoLeader, "election"), "SluiceUnavailable"),
            (tonic::Status::unauthenticated("no token"), "SluiceDenied"),
            (tonic::Status::permission_denied("read role"), "SluiceDenied"),
            (tonic::Status::internal("a bug"), "SluiceFailed"),
            (tonic::Status::data_loss("storage"), "SluiceFailed"),
        ];
        for (status, label) in cases {
            assert_eq!(failure_of("sluice-admin:9090", &status).metric_label(), label, "{status:?}");
        }
        assert!(!is_refusal(&error_status(ErrorCode::Unavailable, "shutting down")));
        assert!(!is_refusal(&tonic::Status::unavailable("connection refused")));
    }
}
