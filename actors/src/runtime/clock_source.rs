//! `node/clock`: the ptp4l poller, present when `[safety.clock] source = "ptp4l"`.
//!
//! A worker of the root (before the segments, so the first reading is on its way when the
//! first safety actor ticks). Every `poll_ms` it asks ptp4l for TIME_STATUS_NP and
//! PORT_DATA_SET over its own [`PtpClient`] and publishes the answer or the failure into the
//! node's [`crate::clock_source::ClockBoard`]; the safety ticks judge the board. Nothing
//! about ptp4l fails the actor: a missing socket, a refusal or garbage is published as a
//! failure (the reading ages into `clock_unsynchronised`), and the client is made again on
//! the next poll. Each request waits at most `timeout_ms`, and only this actor waits.

use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::prelude::*;
use gridvisor_transports::ptp::{ClientOptions, PtpClient, PtpError};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::shared::SiteShared;
use super::tick_after;
use crate::config::ClockSourceKind;

/// `node/clock` for a ptp4l source; None for the others.
pub(crate) fn clock_spec(shared: &Arc<SiteShared>) -> Option<ChildSpec<()>> {
    if shared.time_source.config.source != ClockSourceKind::Ptp4l {
        return None;
    }
    let shared = shared.clone();
    Some(ChildSpec::worker("clock", move |ctx: ChildContext, ()| {
        let shared = shared.clone();
        async move { ctx.spawn(ClockPoller, shared).await }
    }))
}

/// What the poller hears.
pub(crate) enum ClockMsg {
    /// Poll now.
    Poll,
}

pub(crate) struct ClockPoller;

pub(crate) struct ClockPollerState {
    shared: Arc<SiteShared>,
    client: Option<PtpClient>,
    period: Duration,
}

impl ClockPollerState {
    fn options(&self) -> ClientOptions {
        let c = &self.shared.time_source.config;
        ClientOptions {
            socket_dir: c.socket_dir.clone().unwrap_or_else(std::env::temp_dir),
            timeout: Duration::from_millis(c.timeout_ms),
            domain: c.domain,
            ..ClientOptions::default()
        }
    }

    /// One poll: both data sets, or the first failure. A failure drops the client, so that
    /// a ptp4l restarted meanwhile is met by a fresh socket.
    async fn poll(&mut self) -> Result<(), PtpError> {
        let client = match self.client.as_mut() {
            Some(c) => c,
            None => {
                let path = self.shared.time_source.config.path.clone();
                self.client.insert(PtpClient::bind(path, self.options())?)
            }
        };
        let ts = client.time_status().await?;
        let port = client.port_data_set().await?;
        let now = self.shared.clock.now();
        self.shared.time_source.board.publish(&ts, &port, now);
        Ok(())
    }
}

impl Actor for ClockPoller {
    type Msg = ClockMsg;
    type State = ClockPollerState;
    type Arguments = Arc<SiteShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<ClockMsg>,
        shared: Arc<SiteShared>,
    ) -> Result<ClockPollerState, ActorProcessingErr> {
        let period = Duration::from_millis(shared.time_source.config.poll_ms);
        let _ = myself.send_message(ClockMsg::Poll);
        Ok(ClockPollerState {
            shared,
            client: None,
            period,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ClockMsg>,
        msg: ClockMsg,
        s: &mut ClockPollerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClockMsg::Poll => {
                if let Err(e) = s.poll().await {
                    let board = &s.shared.time_source.board;
                    if board.snapshot().error.as_deref() != Some(&e.to_string()) {
                        tracing::warn!(error = %e, "clock source: ptp4l");
                    }
                    board.fail(e.to_string());
                    s.client = None;
                }
                tick_after(&myself, s.period, || ClockMsg::Poll);
            }
        }
        Ok(())
    }
}
