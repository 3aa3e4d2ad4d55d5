//! A TCP proxy in front of the test broker, so that a test can drop the service's
//! broker connection — and keep it down — without touching any other test's
//! connections (`rabbitmqctl close_all_connections` would).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const BROKER: &str = "127.0.0.1:5672";

struct ProxyState {
    open: AtomicBool,
    /// Cancelled to cut every connection proxied so far.
    cut: Mutex<CancellationToken>,
}

/// The proxy; stops with the test's runtime.
pub struct BrokerProxy {
    /// Port to use instead of 5672.
    pub port: u16,
    state: Arc<ProxyState>,
}

impl BrokerProxy {
    /// Starts forwarding a free loopback port to the broker.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(ProxyState {
            open: AtomicBool::new(true),
            cut: Mutex::new(CancellationToken::new()),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !shared.open.load(Ordering::SeqCst) {
                    // Refused: the client sees its connection closed during the handshake.
                    drop(client);
                    continue;
                }
                let cut = shared.cut.lock().expect("token").clone();
                tokio::spawn(async move {
                    let Ok(mut broker) = TcpStream::connect(BROKER).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Self { port, state }
    }

    /// An AMQP URL that goes through the proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Drops every proxied connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        let mut token = self.state.cut.lock().expect("token");
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}
