//! The control loop: beside the request path, never in it.
pub mod anomaly;
pub mod autoscaler;
pub mod forecast;
pub mod usl;
