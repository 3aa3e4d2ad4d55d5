//! Trace export with OpenTelemetry.
//!
//! Spans leave the process over OTLP (HTTP/protobuf, with the reqwest client the service
//! already has) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and nowhere otherwise. The SDK reads the
//! other standard variables itself (`OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`,
//! `…_COMPRESSION`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`); `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none`
//! turn export off.
//!
//! Only this crate's spans are exported (deliveries, Okta calls, publishes), and no log
//! events: log lines carry employee ids for the operator's benefit, span attributes
//! must not.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The instrumentation scope and default `service.name`.
pub const SERVICE_NAME: &str = "iam-provisioner";

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot set up the OTLP trace exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("OTEL_TRACES_EXPORTER: {0:?} is not supported (use otlp or none)")]
    UnsupportedExporter(String),
}

fn env_set(vars: &[(String, String)], name: &str) -> Option<String> {
    vars.iter()
        .find(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_owned())
}

/// Whether the environment asks for trace export.
///
/// # Errors
/// [`OtelError::UnsupportedExporter`] for an `OTEL_TRACES_EXPORTER` other than `otlp`
/// or `none`.
pub fn export_requested(vars: &[(String, String)]) -> Result<bool, OtelError> {
    if env_set(vars, "OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match env_set(vars, "OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => return Err(OtelError::UnsupportedExporter(other.to_owned())),
    }
    Ok(env_set(vars, "OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env_set(vars, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
}

/// The tracer provider the environment asks for, `None` when it asks for no export.
///
/// # Errors
/// [`OtelError`] when the variables are inconsistent or the exporter cannot be built.
pub fn tracer_provider_from_env() -> Result<Option<SdkTracerProvider>, OtelError> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    if !export_requested(&vars)? {
        return Ok(None);
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .build()
        .map_err(OtelError::Exporter)?;
    Ok(Some(provider_with(exporter, &vars)))
}

/// A tracer provider exporting to `traces_url` (the full URL, `…/v1/traces`), for
/// tests and embeddings that do not configure through the environment.
///
/// # Errors
/// [`OtelError::Exporter`] when the URL is not usable.
pub fn tracer_provider(traces_url: &str) -> Result<SdkTracerProvider, OtelError> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url)
        .build()
        .map_err(OtelError::Exporter)?;
    Ok(provider_with(exporter, &[]))
}

fn provider_with(exporter: SpanExporter, vars: &[(String, String)]) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(vars))
        .build()
}

/// The SDK's resource (which reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`),
/// named `iam-provisioner` unless those name it otherwise.
fn resource(vars: &[(String, String)]) -> Resource {
    let named = env_set(vars, "OTEL_SERVICE_NAME").is_some()
        || env_set(vars, "OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|attributes| attributes.contains("service.name="));
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The `tracing` layer that turns this crate's spans into OpenTelemetry spans of
/// `provider`. Log events are not exported (see the module documentation).
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_filter(filter_fn(|metadata| {
            metadata.is_span() && metadata.target().starts_with("iam_provisioner")
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn export_only_when_an_endpoint_is_set() {
        assert!(!export_requested(&vars(&[])).expect("ok"));
        assert!(!export_requested(&vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).expect("ok"));
        assert!(export_requested(&vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )]))
        .expect("ok"));
        assert!(export_requested(&vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )]))
        .expect("ok"));
    }

    #[test]
    fn the_standard_switches_turn_export_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(!export_requested(&vars(&[endpoint, ("OTEL_SDK_DISABLED", "true")])).expect("ok"));
        assert!(
            !export_requested(&vars(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).expect("ok")
        );
        assert!(
            export_requested(&vars(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")])).expect("ok")
        );
        let error = export_requested(&vars(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]))
            .expect_err("unsupported");
        assert!(
            error.to_string().starts_with("OTEL_TRACES_EXPORTER"),
            "{error}"
        );
    }

    #[test]
    fn the_service_is_named_unless_the_environment_names_it() {
        let name = |vars: &[(String, String)]| {
            resource(vars)
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string())
        };
        assert_eq!(name(&[]).as_deref(), Some(SERVICE_NAME));
        // When the environment names it, the SDK's own detector reads the process
        // environment; here only the decision not to override is checked.
        let named = vars(&[("OTEL_SERVICE_NAME", "provisioner-eu")]);
        assert_ne!(name(&named).as_deref(), Some(SERVICE_NAME));
    }
}
