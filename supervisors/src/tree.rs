//! The services every supervisor of one tree shares: the registry of stable addresses, the
//! metrics and the reports. A nested supervisor inherits its parent's.

use crate::metrics::SupervisionMetrics;
use crate::registry::Registry;
use crate::report::SupervisorReports;

/// Services shared by every supervisor of a tree: the registry of stable addresses and the
/// metrics. Both are optional; nested supervisors inherit their parent's.
#[derive(Clone, Default, Debug)]
pub struct TreeContext {
    /// Where paths resolve to current incarnations.
    pub registry: Option<Registry>,
    /// Where starts, restarts and exits are counted.
    pub metrics: Option<SupervisionMetrics>,
    /// Where supervisors publish their reports (starts, exits, restarts, giving up).
    pub reports: Option<SupervisorReports>,
}

impl TreeContext {
    /// A context with a registry and metrics registered in `prometheus`.
    pub fn with_metrics(prometheus: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Ok(TreeContext {
            registry: Some(Registry::new()),
            metrics: Some(SupervisionMetrics::register(prometheus)?),
            reports: Some(SupervisorReports::with_default_capacity()),
        })
    }
}
