//! The dispatcher's admin gRPC services (`sluice.admin.v1`): consumer status, pause/resume and replay, and
//! dead letters (list, redrive, purge). Served on the node's admin port next to the broker's services.

use sluice_broker::Node;

/// The routes of the dispatcher's admin services for `node`.
pub fn routes(node: Node, ingress_base: String) -> tonic::service::Routes {
    let _ = (node, ingress_base);
    tonic::service::Routes::default()
}
