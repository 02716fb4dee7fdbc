//! Exit reasons: how a ractor actor's end maps onto OTP's normal and abnormal exits.
//!
//! | ractor event | [`ExitReason`] | OTP analogue | abnormal? |
//! | --- | --- | --- | --- |
//! | `ActorTerminated`, no reason or `"normal"` | `Normal` | `normal` | no |
//! | `ActorTerminated`, `"shutdown"` or `"shutdown:…"` | `Shutdown` | `shutdown`, `{shutdown, _}` | no |
//! | `ActorTerminated`, any other reason | `Stopped(reason)` | a graceful stop with a reason | no |
//! | `ActorTerminated`, `"killed"` (ractor's `Signal::Kill`) | `Killed` | `killed` | yes |
//! | `ActorFailed` (a handler returned `Err` or panicked) | `Failed(error)` | any other reason | yes |
//!
//! A graceful stop in ractor runs `post_stop`, which is why a stop with a reason counts as
//! normal: the actor chose to end. Transient children are restarted only after abnormal exits.
//! The error of a failure is kept as the original boxed error, so an escalation hook can
//! downcast it to a typed fault.

use std::fmt;
use std::sync::Arc;

use ractor::{ActorProcessingErr, SupervisionEvent};

/// Why a child (or a supervisor) ended.
#[derive(Clone)]
pub enum ExitReason {
    /// Ended on its own without a reason.
    Normal,
    /// Stopped by its supervisor or asked to shut down.
    Shutdown(Option<String>),
    /// Stopped gracefully with a reason of its own.
    Stopped(String),
    /// Killed: no cleanup code ran.
    Killed,
    /// A handler returned an error or panicked.
    Failed(Arc<dyn std::error::Error + Send + Sync>),
}

/// The class of an exit, used as a bounded metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitClass {
    /// [`ExitReason::Normal`] or [`ExitReason::Stopped`].
    Normal,
    /// [`ExitReason::Shutdown`].
    Shutdown,
    /// [`ExitReason::Killed`].
    Killed,
    /// [`ExitReason::Failed`].
    Failed,
}

impl ExitClass {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitClass::Normal => "normal",
            ExitClass::Shutdown => "shutdown",
            ExitClass::Killed => "killed",
            ExitClass::Failed => "failed",
        }
    }
}

impl ExitReason {
    /// Read an exit out of a ractor supervision event; `None` for events that are not exits.
    pub fn from_event(evt: SupervisionEvent) -> Option<(ractor::ActorId, ExitReason)> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _state, reason) => {
                Some((cell.get_id(), ExitReason::from_stop_reason(reason)))
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                Some((cell.get_id(), ExitReason::from_error(err)))
            }
            _ => None,
        }
    }

    /// The reason for a graceful stop (or ractor's kill signal) with this reason string.
    pub fn from_stop_reason(reason: Option<String>) -> ExitReason {
        match reason.as_deref() {
            None | Some("normal") => ExitReason::Normal,
            Some("killed") | Some("actor_task_cancelled") => ExitReason::Killed,
            Some("shutdown") => ExitReason::Shutdown(None),
            Some(r) if r.starts_with("shutdown:") => {
                ExitReason::Shutdown(Some(r["shutdown:".len()..].trim().to_string()))
            }
            Some(_) => ExitReason::Stopped(reason.unwrap_or_default()),
        }
    }

    /// A failure with this error.
    pub fn from_error(err: ActorProcessingErr) -> ExitReason {
        ExitReason::Failed(Arc::from(err))
    }

    /// Abnormal exits (failures and kills) restart transient children.
    pub fn is_abnormal(&self) -> bool {
        matches!(self, ExitReason::Killed | ExitReason::Failed(_))
    }

    /// The class of this exit.
    pub fn class(&self) -> ExitClass {
        match self {
            ExitReason::Normal | ExitReason::Stopped(_) => ExitClass::Normal,
            ExitReason::Shutdown(_) => ExitClass::Shutdown,
            ExitReason::Killed => ExitClass::Killed,
            ExitReason::Failed(_) => ExitClass::Failed,
        }
    }

    /// The failure's error, downcast to `E`, if this is a failure with an `E`.
    pub fn error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            ExitReason::Failed(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown(None) => f.write_str("shutdown"),
            ExitReason::Shutdown(Some(r)) => write!(f, "shutdown: {r}"),
            ExitReason::Stopped(r) => write!(f, "stopped: {r}"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

impl fmt::Debug for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_otp() {
        assert!(!ExitReason::from_stop_reason(None).is_abnormal());
        assert!(!ExitReason::from_stop_reason(Some("shutdown".into())).is_abnormal());
        assert!(!ExitReason::from_stop_reason(Some("shutdown: rebalance".into())).is_abnormal());
        assert!(!ExitReason::from_stop_reason(Some("done".into())).is_abnormal());
        assert!(ExitReason::from_stop_reason(Some("killed".into())).is_abnormal());
        assert!(ExitReason::from_error("boom".into()).is_abnormal());
        assert_eq!(
            ExitReason::from_error("boom".into()).to_string(),
            "failed: boom"
        );
    }

    #[test]
    fn typed_errors_can_be_downcast() {
        #[derive(Debug, thiserror::Error)]
        #[error("too hot")]
        struct TooHot;
        let r = ExitReason::from_error(Box::new(TooHot));
        assert!(r.error::<TooHot>().is_some());
        assert!(ExitReason::Normal.error::<TooHot>().is_none());
    }
}
