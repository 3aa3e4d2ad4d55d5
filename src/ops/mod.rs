//! Operator commands that run beside the service.

pub mod reconcile;
