//! Logging and tracing set-up: `RUST_LOG` filters the logs (default `info`),
//! `LOG_FORMAT` picks `json` or `text` (text by default). Logs go to standard error, leaving standard
//! output to commands that print results. When the environment asks for it (see
//! [`crate::telemetry::otel`]), spans are also exported with OpenTelemetry; the returned guard
//! flushes them on shutdown.

pub mod metrics;
pub mod otel;
pub mod pii;

use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps trace export running; [`TelemetryGuard::shutdown`] (or dropping it) flushes
/// what is still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes buffered spans (within a bound) and stops the exporter.
    pub fn shutdown(mut self) {
        self.flush_and_stop();
    }

    fn flush_and_stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "could not flush the last spans to the collector");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

/// Installs the global subscriber; call once, at start-up.
///
/// # Errors
/// A message naming `LOG_FORMAT`, `RUST_LOG` or the `OTEL_*` variable that is invalid.
pub fn init() -> Result<TelemetryGuard, String> {
    // lapin logs every channel the broker closes at ERROR. The service sees those closes
    // itself and reports the ones that matter (a lost session, a declaration conflict);
    // the rest are expected, such as start-up's passive probes for the classic waiting
    // rooms of earlier versions, and would cry wolf on every fresh start.
    init_with_default_filter("info,lapin::channel=off")
}

/// Like [`init`], with another filter when `RUST_LOG` is unset: commands whose output is
/// their result (the dead-letter commands) keep library chatter off standard error.
///
/// # Errors
/// As [`init`].
pub fn init_with_default_filter(default_filter: &str) -> Result<TelemetryGuard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::new(default_filter),
    };
    let format = std::env::var("LOG_FORMAT").unwrap_or_default();
    let logs = match format.trim().to_ascii_lowercase().as_str() {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        // Colours only for a person at a terminal: escape codes in a file or a log
        // collector are noise.
        "" | "text" => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        other => {
            return Err(format!(
                "LOG_FORMAT: unknown format {other:?} (use json or text)"
            ))
        }
    };
    let provider = crate::telemetry::otel::tracer_provider_from_env().map_err(|e| e.to_string())?;
    let traces = provider.as_ref().map(crate::telemetry::otel::layer);
    // RUST_LOG filters the logs only: spans are exported whatever the log level (the
    // OpenTelemetry layer has its own filter), so quieter logs never break a trace.
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    if provider.is_some() {
        tracing::info!("exporting spans with OTLP (OTEL_EXPORTER_OTLP_ENDPOINT is set)");
    }
    Ok(TelemetryGuard { provider })
}

/// An error and its causes, `outer: inner: innermost`, for a log field: error types keep
/// their causes as sources rather than in their message, so a plain `%error` would show
/// only the outermost.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_shows_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(super::error_chain(&error), "outer: inner");
    }
}
