//! The RabbitMQ adapter: topology, decoding deliveries (`decode`), settling them
//! (`settle`: outcomes and copies published with confirms, then the acknowledgement),
//! and partitioned mode's intake. Only this module knows AMQP types; it hands the
//! pipeline plain ones (`crate::pipeline::envelope`) and carries out what the pipeline
//! returns (`crate::pipeline::settlement`).

pub mod dead_letter_watch;
pub mod decode;
pub mod headers;
pub mod intake;
pub mod migration;
pub mod parking;
pub mod publisher;
pub mod settle;
pub mod topology;
pub mod trace;

use crate::amqp::topology::TopologyNames;
use crate::secret::Secret;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

/// Opens a connection named after this service and what it serves (the name shows in
/// the management UI and in `rabbitmqctl list_connections`).
///
/// # Errors
/// The broker's or the network's error.
pub async fn connect(url: &str, purpose: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("iam-provisioner {purpose}").into());
    let tls = broker_tls()?;
    Connection::connect_with_config(url, properties, tls, lapin::runtime::default_runtime()?).await
}

/// The broker's own TLS trust: the certificates of `AMQP_CA_FILE` added to the system's
/// roots for this connection only. `SSL_CERT_FILE` would also change the roots the Okta
/// client trusts; a private broker CA must not be able to vouch for an Okta host.
///
/// Read from the environment at each connection (the configuration checked it at start-up)
/// so that every command that connects — the service, `dlq`, `held` — honours it without
/// each passing it along, and a renewed CA file is used on the next reconnection.
fn broker_tls() -> Result<OwnedTLSConfig, lapin::Error> {
    let Some(path) = std::env::var_os("AMQP_CA_FILE").filter(|p| !p.is_empty()) else {
        return Ok(OwnedTLSConfig::default());
    };
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        lapin::Error::from(std::io::Error::new(
            e.kind(),
            format!("AMQP_CA_FILE: cannot read {}: {e}", path.to_string_lossy()),
        ))
    })?;
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

/// Where the broker is and what the service's objects on it are called: all that every
/// command talking to the broker needs (the dead-letter commands run on an operator's
/// machine that has no Okta credentials). Read and checked by `crate::config`
/// (`BrokerSettings::from_env`), which is why it has no constructor here.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Broker URL; holds the broker password, hence secret.
    pub amqp_url: Secret,
    pub topology: TopologyNames,
    /// `AMQP_CA_FILE`: extra roots trusted for the broker's certificate only (checked by
    /// the configuration; read again by [`connect`] at each connection).
    pub ca_file: Option<std::path::PathBuf>,
}
