//! iam-provisioner: keeps Okta in step with HR events published to RabbitMQ.
//!
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod okta_sim;
