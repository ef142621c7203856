//! The peers Sluice is compared with, each started on loopback by the harness.

pub mod nats;
pub mod rabbitmq;
