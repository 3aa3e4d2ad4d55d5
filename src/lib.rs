//! iam-provisioner: keeps Okta in step with HR events published to RabbitMQ.
//!
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod amqp;
pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod okta;
// Test double, not production code: the deploy image is built without this feature.
#[cfg(feature = "okta-sim")]
pub mod okta_sim;
pub mod ops;
pub mod pipeline;
pub mod secret;
pub mod telemetry;
pub mod trust;
