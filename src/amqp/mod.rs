//! The RabbitMQ adapter: topology, reading deliveries, publishing outcomes and
//! dead-letter copies with publisher confirms, and partitioned mode's intake. Only this
//! module knows AMQP types.

pub mod dead_letter_watch;
pub mod headers;
pub mod intake;
pub mod migration;
pub mod parking;
pub mod publisher;
pub mod topology;
pub mod trace;

use lapin::{Connection, ConnectionProperties};

/// Opens a connection named after this service and what it serves (the name shows in
/// the management UI and in `rabbitmqctl list_connections`).
///
/// # Errors
/// The broker's or the network's error.
pub async fn connect(url: &str, purpose: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("iam-provisioner {purpose}").into());
    Connection::connect(url, properties).await
}
