//! iam-provisioner: keeps Okta in step with HR events published to RabbitMQ.
//!
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod amqp;
pub mod app;
pub mod config;
pub mod dlq;
pub mod domain;
pub mod health;
pub mod metrics;
pub mod okta;
pub mod okta_sim;
pub mod otel;
pub mod outage;
pub mod provisioner;
pub mod retry;
pub mod secret;
pub mod sequencer;
pub mod telemetry;
pub mod worker;
