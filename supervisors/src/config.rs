//! How a supervisor is configured: its strategy (OTP's `strategy`) and its flags (OTP's
//! `sup_flags()` plus gridvisor's additions: escalation hook, tree services, jitter seed,
//! metrics labels).

use std::sync::Arc;
use std::time::Duration;

use crate::escalation::{ChildExit, EscalationHook, HookDecision};
use crate::intensity::RestartIntensity;
use crate::metrics::MetricsGranularity;
use crate::path::ActorPath;
use crate::tree::TreeContext;

/// The restart strategy (OTP's `strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Restart all children when one exits.
    OneForAll,
    /// Restart the exited child and those started after it.
    RestForOne,
    /// Many children of one spec, started with arguments (OTP's `simple_one_for_one`).
    SimpleOneForOne,
}

impl Strategy {
    /// OTP's name for the strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
            Strategy::SimpleOneForOne => "simple_one_for_one",
        }
    }
}

/// A supervisor's configuration (OTP's `sup_flags()` plus gridvisor's additions).
#[derive(Clone)]
pub struct SupervisorConfig {
    pub(crate) path: ActorPath,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: RestartIntensity,
    pub(crate) hook: Option<EscalationHook>,
    pub(crate) tree: Option<TreeContext>,
    pub(crate) seed: u64,
    pub(crate) granularity: Option<MetricsGranularity>,
    pub(crate) metrics_label: Option<ActorPath>,
}

impl std::fmt::Debug for SupervisorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorConfig")
            .field("path", &self.path)
            .field("strategy", &self.strategy)
            .field("intensity", &self.intensity)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl SupervisorConfig {
    /// A supervisor named `name` (its path when started as a root; a nested supervisor takes
    /// its path from its parent) with OTP's default intensity, 1 restart in 5 s.
    pub fn new(name: &str, strategy: Strategy) -> Self {
        SupervisorConfig {
            path: ActorPath::root(name),
            strategy,
            intensity: RestartIntensity::default(),
            hook: None,
            tree: None,
            seed: 0x6772_6964_7669_736f,
            granularity: None,
            metrics_label: None,
        }
    }

    /// Set the restart intensity.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.intensity = RestartIntensity::new(max_restarts, period);
        self
    }

    /// Map child exits to actions with `hook` (see [`crate::escalation`]).
    pub fn hook(
        mut self,
        hook: impl Fn(&ChildExit<'_>) -> HookDecision + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Use this registry and these metrics (nested supervisors inherit them).
    pub fn tree(mut self, tree: TreeContext) -> Self {
        self.tree = Some(tree);
        self
    }

    /// Seed for backoff jitter (deterministic replays).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// How a dynamic supervisor labels its children's metrics (default: aggregated).
    pub fn metrics_granularity(mut self, g: MetricsGranularity) -> Self {
        self.granularity = Some(g);
        self
    }

    /// Count this supervisor's running children under `label`, shared with every supervisor
    /// given the same label (one series for 100,000 alike supervisors), instead of under
    /// its own path.
    pub fn metrics_label(mut self, label: impl Into<ActorPath>) -> Self {
        self.metrics_label = Some(label.into());
        self
    }

    /// The configured path.
    pub fn path(&self) -> &ActorPath {
        &self.path
    }
}
