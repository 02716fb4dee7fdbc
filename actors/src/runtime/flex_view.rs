//! The flexibility forecast of a running node ([`Node::flexibility`]): the scope's segments,
//! their sessions, transformer models and safe states read from the boards now, handed to
//! the pure [`crate::flexibility::forecast`].
//!
//! A configured vehicle (`[[vehicles]]`, the demo's) has no departure floor in dispatch
//! ([`crate::session::Session::departure_floor_pct`]); the forecast follows dispatch and
//! gives it none either. In a cluster a node forecasts the segments it drives.

use serde::Serialize;

use super::node::Node;
use super::shared::SegmentShared;
use super::site::Scope;
use crate::flexibility::{forecast, FlexError, FlexStep, SegmentFlex, VehicleFlex};
use crate::session::SourceKind;

/// A forecast as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlexibilityView {
    /// The scope asked for.
    pub scope: Scope,
    /// When the forecast was made (step offsets count from here), RFC 3339.
    pub at: String,
    /// Its horizon, s.
    pub horizon_s: f64,
    /// Its step, s.
    pub step_s: f64,
    /// The segments it covers (those this node drives).
    pub segments: Vec<String>,
    /// Vehicles left out for an unusable SoC or capacity.
    pub excluded: usize,
    /// Per step.
    pub steps: Vec<FlexStep>,
}

/// Why a forecast was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlexQueryError {
    /// A parameter is out of range.
    #[error(transparent)]
    Invalid(#[from] FlexError),
    /// The scope names nothing in this site.
    #[error("id: no {kind} named {id:?} in this site")]
    UnknownScope {
        /// substation or segment.
        kind: &'static str,
        /// The id given.
        id: String,
    },
}

impl Node {
    /// The flexibility forecast of `scope` over `horizon_s` in steps of `step_s`, from now.
    pub fn flexibility(
        &self,
        scope: Scope,
        horizon_s: f64,
        step_s: f64,
    ) -> Result<FlexibilityView, FlexQueryError> {
        let t = &self.shared.topology;
        let ids: Vec<String> = match &scope {
            Scope::Site => t.segments().map(|(_, s)| s.id.clone()).collect(),
            Scope::Substation(id) => t
                .substations
                .iter()
                .find(|s| &s.id == id)
                .ok_or_else(|| FlexQueryError::UnknownScope {
                    kind: "substation",
                    id: id.clone(),
                })?
                .segments
                .iter()
                .map(|s| s.id.clone())
                .collect(),
            Scope::Segment(id) => {
                t.segment(id).ok_or_else(|| FlexQueryError::UnknownScope {
                    kind: "segment",
                    id: id.clone(),
                })?;
                vec![id.clone()]
            }
        };
        let owned = super::shared::lock(&self.shared.owned).clone();
        let now_s = self.shared.clock.now_s();
        let segs: Vec<&std::sync::Arc<SegmentShared>> = ids
            .iter()
            .filter(|id| owned.contains(*id))
            .filter_map(|id| self.shared.segments.get(id))
            .collect();
        let inputs: Vec<SegmentFlex> = segs.iter().map(|s| segment_input(s, now_s)).collect();
        let f = forecast(&inputs, horizon_s, step_s)?;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(FlexibilityView {
            scope,
            at: super::site::format_time(at),
            horizon_s,
            step_s,
            segments: segs.iter().map(|s| s.id.clone()).collect(),
            excluded: f.excluded,
            steps: f.steps,
        })
    }
}

fn segment_input(s: &SegmentShared, now_s: f64) -> SegmentFlex {
    let (thermal, hot_spot_c) = {
        let m = super::shared::lock(&s.thermal);
        (*m.params(), m.hot_spot_c())
    };
    let vehicles = s
        .sessions
        .iter()
        .filter(|e| !e.value().session.state.is_final())
        .map(|e| {
            let v = &e.value().session;
            let charger = s.config.chargers.iter().find(|c| &c.id == e.key());
            let charger_kw = charger.map_or(0.0, |c| c.max_kw);
            let bidirectional = charger.is_some_and(|c| c.bidirectional);
            let configured = v.sources.departure.kind == SourceKind::Config;
            VehicleFlex {
                soc_pct: v.soc_pct,
                capacity_kwh: v.capacity_kwh,
                min_soc_pct: v.min_soc_pct,
                target_soc_pct: if configured {
                    v.min_soc_pct
                } else {
                    v.target_soc_pct
                },
                depart_in_s: v.depart_s - now_s,
                max_charge_kw: v.max_charge_kw(),
                max_discharge_kw: if bidirectional {
                    v.max_discharge_kw()
                } else {
                    0.0
                },
                charger_kw,
            }
        })
        .collect();
    SegmentFlex {
        vehicles,
        thermal,
        hot_spot_c,
        level: s.level(),
    }
}
