//! The node's `telemetry` subtree: exports that watch the node without being part of it.
//!
//! `node/telemetry` (one_for_one) has one worker, `mqtt`, present when the topology has an
//! `[mqtt]` table. It is the root's last child: it starts after the segments and the site
//! (its first messages find them running) and stops first. The worker owns the
//! [`Publisher`] (the rumqttc client and its connection task); every `interval_ms` its tick
//! queues one message per segment and per charger, read from the segment boards, and re-arms
//! the next tick ([`tick_after`]), so a slow tick never piles ticks up. Its `post_stop` ends
//! the connection task.
//!
//! Nothing here can hold the node up: publishing never waits (a full queue drops, see
//! [`crate::io::mqtt`]), an unreachable broker is retried by the connection task without
//! failing the actor, and the TLS files are read once, when the node starts (a bad file fails
//! `Node::start`, naming it, rather than a restart later).

use std::sync::Arc;
use std::time::Duration;

use gridvisor_supervisors::prelude::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::node::{NodeError, SEGMENT_MAX_RESTARTS, SEGMENT_RESTART_PERIOD};
use super::shared::SiteShared;
use super::tick_after;
use crate::config::Mqtt;
use crate::io::mqtt::{client_tls, request_capacity, MqttMetrics, Publisher};

/// What the `mqtt` worker starts from.
#[derive(Clone)]
pub(crate) struct MqttArgs {
    shared: Arc<SiteShared>,
    config: Mqtt,
    tls: Option<Arc<rustls::ClientConfig>>,
    capacity: usize,
    metrics: MqttMetrics,
}

/// `node/telemetry` when the topology has `[mqtt]`: reads the TLS files and registers the
/// export's metrics (once per node: a restarted worker reuses them).
pub(crate) fn telemetry_spec(shared: &Arc<SiteShared>) -> Result<Option<ChildSpec<()>>, NodeError> {
    let Some(config) = shared.topology.mqtt.clone() else {
        return Ok(None);
    };
    let tls = config
        .tls
        .as_ref()
        .map(client_tls)
        .transpose()
        .map_err(NodeError::Config)?;
    let metrics = MqttMetrics::register(&shared.prometheus)?;
    let messages = shared.segments.len()
        + shared
            .segments
            .values()
            .map(|s| s.config.chargers.len())
            .sum::<usize>();
    let args = MqttArgs {
        shared: shared.clone(),
        config,
        tls,
        capacity: request_capacity(messages),
        metrics,
    };
    let spec = ChildSpec::worker("telemetry", move |ctx: ChildContext, ()| {
        let args = args.clone();
        async move {
            let mqtt = ChildSpec::worker("mqtt", move |ctx: ChildContext, ()| {
                let args = args.clone();
                async move { ctx.spawn(MqttExport, args).await }
            });
            let config = SupervisorConfig::new("telemetry", Strategy::OneForOne)
                .intensity(SEGMENT_MAX_RESTARTS, SEGMENT_RESTART_PERIOD);
            Supervisor::start_in(&ctx, config, vec![mqtt]).await
        }
    })
    .kind(ChildKind::Supervisor)
    .shutdown(Shutdown::Infinity);
    Ok(Some(spec))
}

/// What the `mqtt` worker hears.
pub(crate) enum MqttMsg {
    /// The publish period elapsed.
    Tick,
}

/// The `mqtt` worker.
pub(crate) struct MqttExport;

pub(crate) struct MqttState {
    shared: Arc<SiteShared>,
    publisher: Publisher,
    period: Duration,
}

impl Actor for MqttExport {
    type Msg = MqttMsg;
    type State = MqttState;
    type Arguments = MqttArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MqttMsg>,
        a: MqttArgs,
    ) -> Result<MqttState, ActorProcessingErr> {
        let publisher = Publisher::start(&a.config, a.tls, a.capacity, a.metrics);
        tracing::info!(
            broker = %a.config.broker,
            prefix = %a.config.topic_prefix,
            tls = a.config.tls.is_some(),
            "telemetry: exporting to MQTT"
        );
        // The first snapshot at once (the tree is up: this is the root's last child).
        let _ = myself.send_message(MqttMsg::Tick);
        Ok(MqttState {
            shared: a.shared,
            publisher,
            period: Duration::from_millis(a.config.interval_ms),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MqttMsg>,
        msg: MqttMsg,
        s: &mut MqttState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MqttMsg::Tick => {
                s.publisher.publish_site(&s.shared);
                tick_after(&myself, s.period, || MqttMsg::Tick);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MqttMsg>,
        s: &mut MqttState,
    ) -> Result<(), ActorProcessingErr> {
        s.publisher.stop();
        Ok(())
    }
}
