//! The Okta adapter: a Management API client that speaks Okta's wire format and turns
//! its answers into typed results and classified errors, plus the group-name cache.

pub mod auth;
pub mod client;
pub mod dpop;
pub mod dry_run;
pub mod error;
pub mod groups;
pub mod listing;
pub mod pacing;
pub mod rate_headers;
pub mod search;

pub use auth::{OktaAuth, ServiceApp, SigningKey};
pub use client::{OktaClient, OktaClientSettings, OktaGroup, OktaUser};
pub use error::{LimitKind, OktaError};
