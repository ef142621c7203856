//! rabbitmq driver: see bench/src/driver.rs.
