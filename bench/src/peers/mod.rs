//! The peers Sluice is compared with, each started on loopback by the harness.

pub(crate) mod nats;
pub(crate) mod rabbitmq;
