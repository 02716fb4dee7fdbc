//! Supervision metrics: starts, restarts and exits by reason, per actor path, in a
//! Prometheus registry the caller passes in.
//!
//! Label cardinality is bounded: the `reason` label is the [`ExitClass`] (four values), never
//! the free-text reason. A dynamic supervisor with 100,000 children would otherwise add
//! 100,000 series per metric, which no Prometheus server enjoys, so its children are counted
//! under the supervisor's path with a `/*` suffix unless [`MetricsGranularity::PerChild`] is
//! chosen; per-child series are removed when the child is removed.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

use crate::exit::ExitClass;
use crate::path::ActorPath;

/// How children of a dynamic supervisor are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsGranularity {
    /// One series per child path.
    PerChild,
    /// One series for all children, labelled `<supervisor path>/*` (the default for dynamic
    /// supervisors).
    #[default]
    Aggregated,
}

/// The supervision metric families, registered once per Prometheus registry.
#[derive(Clone, Debug)]
pub struct SupervisionMetrics {
    starts: IntCounterVec,
    restarts: IntCounterVec,
    exits: IntCounterVec,
    intensity_exceeded: IntCounterVec,
    children: IntGaugeVec,
}

impl SupervisionMetrics {
    /// Create the metric families and register them in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let starts = IntCounterVec::new(
            Opts::new(
                "gridvisor_actor_starts_total",
                "Actor starts (first starts and restarts)",
            ),
            &["path"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "gridvisor_actor_restarts_total",
                "Restarts made by the supervisor",
            ),
            &["path"],
        )?;
        let exits = IntCounterVec::new(
            Opts::new("gridvisor_actor_exits_total", "Actor exits by reason class"),
            &["path", "reason"],
        )?;
        let intensity_exceeded = IntCounterVec::new(
            Opts::new(
                "gridvisor_supervisor_intensity_exceeded_total",
                "Times a supervisor gave up because it reached its restart intensity",
            ),
            &["path"],
        )?;
        let children = IntGaugeVec::new(
            Opts::new(
                "gridvisor_supervisor_children",
                "Running children of a supervisor",
            ),
            &["path"],
        )?;
        registry.register(Box::new(starts.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(exits.clone()))?;
        registry.register(Box::new(intensity_exceeded.clone()))?;
        registry.register(Box::new(children.clone()))?;
        Ok(SupervisionMetrics {
            starts,
            restarts,
            exits,
            intensity_exceeded,
            children,
        })
    }

    /// Counters for one label value, resolved once and kept.
    pub(crate) fn series(&self, path: &str) -> Series {
        Series {
            starts: self.starts.with_label_values(&[path]),
            restarts: self.restarts.with_label_values(&[path]),
            exits: [
                self.exits
                    .with_label_values(&[path, ExitClass::Normal.as_str()]),
                self.exits
                    .with_label_values(&[path, ExitClass::Shutdown.as_str()]),
                self.exits
                    .with_label_values(&[path, ExitClass::Killed.as_str()]),
                self.exits
                    .with_label_values(&[path, ExitClass::Failed.as_str()]),
            ],
        }
    }

    pub(crate) fn remove_series(&self, path: &str) {
        let _ = self.starts.remove_label_values(&[path]);
        let _ = self.restarts.remove_label_values(&[path]);
        for class in [
            ExitClass::Normal,
            ExitClass::Shutdown,
            ExitClass::Killed,
            ExitClass::Failed,
        ] {
            let _ = self.exits.remove_label_values(&[path, class.as_str()]);
        }
    }

    pub(crate) fn intensity_exceeded(&self, supervisor: &ActorPath) {
        self.intensity_exceeded
            .with_label_values(&[supervisor.as_str()])
            .inc();
    }

    pub(crate) fn children_gauge(&self, supervisor: &ActorPath) -> prometheus::IntGauge {
        self.children.with_label_values(&[supervisor.as_str()])
    }
}

/// Resolved counters for one path.
#[derive(Clone)]
pub(crate) struct Series {
    pub(crate) starts: IntCounter,
    pub(crate) restarts: IntCounter,
    exits: [IntCounter; 4],
}

impl Series {
    pub(crate) fn exit(&self, class: ExitClass) {
        let i = match class {
            ExitClass::Normal => 0,
            ExitClass::Shutdown => 1,
            ExitClass::Killed => 2,
            ExitClass::Failed => 3,
        };
        self.exits[i].inc();
    }
}
