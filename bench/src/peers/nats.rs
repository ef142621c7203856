//! nats driver: see bench/src/driver.rs.
