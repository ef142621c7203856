//! Every cross-process test in one binary, so it is compiled and linked once: real `sluice` processes on
//! loopback, a module per subsystem, numbered from basic to exotic. Filter by module: `scripts/test.sh t41_`.

mod t05_bad_configuration;
mod t10_single_node_kill9;
mod t20_three_nodes_leader_kill9;
mod t21_leader_balance;
mod t22_replication_stream;
mod t30_snapshot_catch_up;
mod t40_ingress_conformance;
mod t41_ingress_durability_dedupe;
mod t42_ingress_slow_clients;
mod t43_sdk_round_trip;
mod t50_resources_apply;
mod t51_retention;
mod t53_cli_kubectl;
mod t60_dispatch;
mod t61_replies;
mod t62_ordered_delivery;
mod t63_dispatch_failover;
mod t64_python_subscriber;
mod t65_dispatch_options;
mod t70_cluster_membership;
mod t71_events_api;
mod t72_consumers_admin;
mod t73_statefulset_bootstrap;
mod t80_transport_encryption;
mod t81_sender_identity;
mod t82_admin_auth;
mod t83_hostile_input;
mod t84_sluice_as_issuer;
mod t90_serving;
mod t91_autoscaling;
mod t92_serving_websockets;
mod t93_serving_logs;
mod t94_failing_revisions;
mod t95_kubernetes_controller;
mod t96_revisions_on_kubernetes;
