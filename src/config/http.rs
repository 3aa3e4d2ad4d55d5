//! The address of the service's HTTP endpoints (`/healthz`, `/readyz`, `/metrics`).

use super::{invalid, read, ConfigError};
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Deserialize)]
struct RawHttpEnv {
    http_listen: Option<String>,
}

/// The HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `HTTP_LISTEN`: address of /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
}

impl HttpSettings {
    pub(super) fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let raw: RawHttpEnv = read(vars)?;
        let listen = raw
            .http_listen
            .as_deref()
            .unwrap_or("0.0.0.0:8080")
            .parse::<SocketAddr>()
            .map_err(|e| {
                invalid(
                    "HTTP_LISTEN",
                    format!("not an address like 0.0.0.0:8080 ({e})"),
                )
            })?;
        Ok(Self { listen })
    }
}
