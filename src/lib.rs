//! iam-provisioner: keeps Okta in step with HR events published to RabbitMQ.
//!
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod amqp;
pub mod app;
pub mod audit;
pub mod config;
pub mod deferral;
pub mod dlq;
pub mod domain;
pub mod guard;
pub mod health;
pub mod held;
pub mod lanes;
pub mod mapping_check;
pub mod mapping_reload;
pub mod metrics;
pub mod okta;
pub mod okta_sim;
pub mod ops;
pub mod otel;
pub mod outage;
pub mod pii;
pub mod provisioner;
pub mod retry;
pub mod schedule;
pub mod secret;
pub mod sequencer;
pub mod telemetry;
pub mod trust;
pub mod worker;
