//! Test helpers for observability: a strict OpenMetrics reader, an OTLP receiver, and
//! a proxy that lets a test drop its service's broker connection.

#![allow(dead_code)]

pub mod broker_proxy;
pub mod openmetrics;
pub mod otlp;
