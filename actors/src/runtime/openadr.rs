//! `node/openadr/ven`: the node as an OpenADR 2.0b VEN, present when the topology has
//! `[openadr]`.
//!
//! The `ven` worker owns one task that runs the VEN: register (oadrQueryRegistration, then
//! oadrCreatePartyRegistration; the ven and registration ids are kept in the VEN's redb
//! file, so a restart does not register again), register the TELEMETRY_USAGE report, then
//! poll every `poll_interval_s`. Each oadrDistributeEvent goes through the [`EventBook`]
//! (optIn or optOut against [`site_capacity`]) and is answered with oadrCreatedEvent; at each
//! interval's start the task submits its grid request to the site aggregator, and stops it
//! when the event is cancelled. Reports (the site's metered power) go out every
//! `report_interval_s` once the VTN asked for them.
//!
//! A failed exchange is counted and retried after a bounded backoff ([`VenLimits`]); it never
//! fails the actor. The task ending (a bug, a panic) fails the worker, and its own supervisor
//! restarts it with backoff: the site and the segments are never touched. The VEN talks to
//! the site only through its mailbox, with a bound ([`SITE_CALL_LIMIT`]), so it can never hold
//! up the safety path.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use gridvisor_supervisors::prelude::*;
use prometheus::{IntCounter, IntCounterVec, Opts};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::node::{NodeError, SEGMENT_MAX_RESTARTS, SEGMENT_RESTART_PERIOD};
use super::shared::{lock, SiteShared};
use super::{GridRequest, RequestError, Scope, SiteMsg};
use crate::config::OpenAdr;
use crate::io::openadr::book::{judge, Action, Capacity, EventBook, SimpleLevels};
use crate::io::openadr::client::{client_tls, ClientError, VenLimits, VtnClient};
use crate::io::openadr::messages::{
    EventResponse, Incoming, Opt, Outgoing, ReportRequest, UsageReport,
};
use crate::io::openadr::store::{Registration, VenStore};
use crate::ladder::FaultKey;

/// How long the VEN waits for the site aggregator to take or stop a request.
pub const SITE_CALL_LIMIT: Duration = Duration::from_secs(10);
/// The shortest sleep of the VEN's loop (a step start in the past wakes it at once).
pub const MIN_WAKE: Duration = Duration::from_millis(20);
/// The first restart delay of a failed `ven` worker.
pub const VEN_RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// The longest restart delay of a failed `ven` worker.
pub const VEN_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The report's `reportSpecifierID` and `rID`.
pub const REPORT_SPECIFIER: &str = "gridvisor-site-usage";
/// The report's data point.
pub const REPORT_R_ID: &str = "site-power";

/// The VEN's metrics.
#[derive(Clone)]
pub struct VenMetrics {
    events: IntCounterVec,
    polls: IntCounter,
    errors: IntCounterVec,
    reports: IntCounter,
    requests: IntCounterVec,
}

impl VenMetrics {
    fn register(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "gridvisor_openadr_events_total",
                "OpenADR events (new or modified) received, opted in, opted out and cancelled",
            ),
            &["outcome"],
        )?;
        r.register(Box::new(events.clone()))?;
        let polls = IntCounter::new("gridvisor_openadr_polls_total", "oadrPoll exchanges")?;
        r.register(Box::new(polls.clone()))?;
        let errors = IntCounterVec::new(
            Opts::new(
                "gridvisor_openadr_errors_total",
                "Failed OpenADR exchanges and site calls, by stage",
            ),
            &["stage"],
        )?;
        r.register(Box::new(errors.clone()))?;
        let reports = IntCounter::new(
            "gridvisor_openadr_reports_total",
            "oadrUpdateReport messages the VTN accepted",
        )?;
        r.register(Box::new(reports.clone()))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "gridvisor_openadr_requests_total",
                "Grid requests the VEN submitted to or stopped at the site",
            ),
            &["action"],
        )?;
        r.register(Box::new(requests.clone()))?;
        Ok(VenMetrics {
            events,
            polls,
            errors,
            reports,
            requests,
        })
    }
}

/// One event as [`VenSnapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// `eventID`.
    pub id: String,
    /// `modificationNumber`.
    pub modification: u32,
    /// The answer.
    pub opt: Opt,
    /// Why it was opted out.
    pub reason: Option<String>,
    /// Cancelled by the VTN.
    pub cancelled: bool,
    /// Its running request was stopped (or none ran).
    pub stopped: bool,
    /// The last grid request it submitted.
    pub request: Option<String>,
    /// Steps submitted.
    pub submitted: usize,
}

/// What the VEN is doing, for the API and tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VenSnapshot {
    /// The registration, once registered.
    pub registration: Option<Registration>,
    /// The events known.
    pub events: Vec<EventView>,
    /// The report requests the VTN made.
    pub report_requests: Vec<String>,
    /// Reports the VTN accepted.
    pub reports_sent: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// The VEN's state as the node shows it.
#[derive(Default)]
pub struct VenView(Mutex<VenSnapshot>);

impl VenView {
    /// A copy of the current state.
    pub fn snapshot(&self) -> VenSnapshot {
        lock(&self.0).clone()
    }
}

/// What the `ven` worker starts from.
#[derive(Clone)]
pub(crate) struct VenArgs {
    shared: Arc<SiteShared>,
    config: OpenAdr,
    client: VtnClient,
    metrics: VenMetrics,
    view: Arc<VenView>,
    /// The running VEN task, shared by the worker's incarnations: a new one ends the old
    /// first (a killed worker runs no `post_stop`), so two never run and the store is free.
    running: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

/// The `node/openadr` subtree and the view of its VEN.
pub(crate) type VenSpec = (ChildSpec<()>, Arc<VenView>);

/// `node/openadr` when the topology has `[openadr]`: reads the TLS files and opens the store
/// now (a bad one fails `Node::start`, naming it), registers the metrics once.
pub(crate) fn openadr_spec(shared: &Arc<SiteShared>) -> Result<Option<VenSpec>, NodeError> {
    let Some(config) = shared.topology.openadr.clone() else {
        return Ok(None);
    };
    let tls = config
        .tls
        .as_ref()
        .map(client_tls)
        .transpose()
        .map_err(NodeError::Config)?;
    let client = VtnClient::new(&config.vtn_url, tls, VenLimits::default())
        .map_err(|e| NodeError::Config(format!("[openadr] {e}")))?;
    // Opened once now so that a bad file fails the start; the VEN's task opens it for itself
    // (and closes it when it ends), so a restarted VEN or node finds it free.
    drop(
        VenStore::open(&config.store)
            .map_err(|e| NodeError::Config(format!("[openadr] store {e}")))?,
    );
    let view = Arc::new(VenView::default());
    let args = VenArgs {
        shared: shared.clone(),
        config,
        client,
        metrics: VenMetrics::register(&shared.prometheus)?,
        view: view.clone(),
        running: Arc::default(),
    };
    let spec = ChildSpec::worker("openadr", move |ctx: ChildContext, ()| {
        let args = args.clone();
        async move {
            let ven = ChildSpec::worker("ven", move |ctx: ChildContext, ()| {
                let args = args.clone();
                async move { ctx.spawn(VenActor, args).await }
            })
            .backoff(Backoff::exponential(
                VEN_RESTART_BACKOFF,
                VEN_RESTART_BACKOFF_MAX,
            ));
            let config = SupervisorConfig::new("openadr", Strategy::OneForOne)
                .intensity(SEGMENT_MAX_RESTARTS, SEGMENT_RESTART_PERIOD);
            Supervisor::start_in(&ctx, config, vec![ven]).await
        }
    })
    .kind(ChildKind::Supervisor)
    .shutdown(Shutdown::Infinity);
    Ok(Some((spec, view)))
}

/// What the `ven` worker hears.
pub(crate) enum VenMsg {
    /// The VEN's task ended (it never does unless something is wrong).
    Ended(String),
}

/// The `ven` worker.
pub(crate) struct VenActor;

impl Actor for VenActor {
    type Msg = VenMsg;
    type State = Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>;
    type Arguments = VenArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VenMsg>,
        a: VenArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        tracing::info!(vtn = %a.config.vtn_url, ven = %a.config.ven_name, "openadr: VEN starting");
        let running = a.running.clone();
        let mut slot = running.lock().await;
        stop_task(&mut slot).await;
        // The task is ended by `post_stop` or the next incarnation (dropping the store with
        // it); its end, or a panic in it, is the worker's failure.
        *slot = Some(tokio::spawn(async move {
            let why = match std::panic::AssertUnwindSafe(run(a)).catch_unwind().await {
                Ok(why) => why,
                Err(_) => "the VEN task panicked".to_owned(),
            };
            let _ = myself.send_message(VenMsg::Ended(why));
        }));
        drop(slot);
        Ok(running)
    }

    async fn handle(
        &self,
        _myself: ActorRef<VenMsg>,
        msg: VenMsg,
        _running: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VenMsg::Ended(why) => Err(why.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<VenMsg>,
        running: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        stop_task(&mut *running.lock().await).await;
        Ok(())
    }
}

/// End the VEN task in `slot`, if any, and wait until it is dropped (its store closed).
async fn stop_task(slot: &mut Option<JoinHandle<()>>) {
    if let Some(task) = slot.take() {
        task.abort();
        let _ = task.await;
    }
}

/// The site's current dispatchable range at its meter, kW: what the sessions of the driven
/// segments could take and give this cycle (the dispatchers' own figures). The one place the
/// VEN asks "can the site do this?": the flexibility forecast can answer here instead.
pub fn site_capacity(shared: &SiteShared) -> Capacity {
    let owned = lock(&shared.owned).clone();
    let (mut up, mut down) = (0.0, 0.0);
    for seg in shared.segments.values().filter(|s| owned.contains(&s.id)) {
        let t = seg.telemetry();
        up += t.max_charge_kw;
        down += t.max_discharge_kw;
    }
    Capacity {
        max_kw: up,
        min_kw: -down,
    }
}

/// The site's metered power, kW: the sum of the driven segments' meters, or None while any of
/// them has no fresh reading (`meter_stale`): a missing reading is never reported as 0.
pub fn site_metered_kw(shared: &SiteShared) -> Option<f64> {
    let owned = lock(&shared.owned).clone();
    let mut sum = 0.0;
    for seg in shared.segments.values().filter(|s| owned.contains(&s.id)) {
        if lock(&seg.ladder).causes().contains(&FaultKey::MeterStale) {
            return None;
        }
        sum += seg.telemetry().metered_kw;
    }
    Some(sum)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("gv-{nanos:x}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The VEN's running state (owned by its task).
struct Ven {
    a: VenArgs,
    store: Arc<VenStore>,
    levels: Option<SimpleLevels>,
    report: UsageReport,
    book: EventBook,
    registration: Option<Registration>,
    /// The usage report was registered with this registration.
    report_registered: bool,
    reports: Vec<ReportRequest>,
    failures: u32,
    next_poll: Instant,
    next_report: Instant,
}

async fn run(a: VenArgs) -> String {
    let mut ven = match Ven::load(a).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    loop {
        if ven.registration.is_none() {
            if let Err(e) = ven.register().await {
                ven.failed("register", &e);
                tokio::time::sleep(ven.a.client.limits().backoff(ven.failures)).await;
                continue;
            }
        }
        if !ven.report_registered {
            if let Err(e) = ven.register_report().await {
                ven.failed("register_report", &e);
                tokio::time::sleep(ven.a.client.limits().backoff(ven.failures)).await;
                continue;
            }
        }
        tokio::time::sleep_until(ven.next_wake()).await;
        let now = Instant::now();
        if now >= ven.next_poll {
            ven.poll().await;
        }
        if now >= ven.next_report && !ven.reports.is_empty() {
            ven.send_report().await;
        }
        ven.act().await;
    }
}

impl Ven {
    async fn load(a: VenArgs) -> Result<Ven, String> {
        let path = a.config.store.clone();
        let (store, registration, mut book) = tokio::task::spawn_blocking(move || {
            let store = VenStore::open(&path)?;
            let (registration, book) = (store.registration()?, store.book()?);
            Ok::<_, String>((Arc::new(store), registration, book))
        })
        .await
        .map_err(|e| e.to_string())??;
        // A step under way when the node (or the VEN) stopped is submitted again: the site
        // answers a repeated request id with its first receipt when it still has it.
        let now = unix_now();
        for e in book.entries.values_mut() {
            let current: Vec<usize> = e
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.start_s <= now && now < s.end_s)
                .map(|(i, _)| i)
                .collect();
            e.submitted.retain(|i| !current.contains(i));
        }
        let period = Duration::from_secs_f64(a.config.report_interval_s);
        let ven = Ven {
            store,
            levels: a.config.simple_levels,
            report: UsageReport {
                specifier_id: REPORT_SPECIFIER.into(),
                r_id: REPORT_R_ID.into(),
                resource_id: a.shared.topology.site.id.clone(),
                period,
            },
            book,
            registration,
            report_registered: false,
            reports: Vec::new(),
            failures: 0,
            next_poll: Instant::now(),
            next_report: Instant::now() + period,
            a,
        };
        ven.publish();
        Ok(ven)
    }

    fn failed(&mut self, stage: &str, e: &dyn std::fmt::Display) {
        self.failures = self.failures.saturating_add(1);
        self.a.metrics.errors.with_label_values(&[stage]).inc();
        tracing::warn!(stage, error = %e, failures = self.failures, "openadr: exchange failed");
        lock(&self.a.view.0).last_error = Some(format!("{stage}: {e}"));
    }

    fn publish(&self) {
        let mut v = lock(&self.a.view.0);
        v.registration = self.registration.clone();
        v.report_requests = self.reports.iter().map(|r| r.request_id.clone()).collect();
        v.events = self
            .book
            .entries
            .values()
            .map(|e| EventView {
                id: e.event.id.clone(),
                modification: e.event.modification,
                opt: e.opt,
                reason: e.reason.clone(),
                cancelled: e.cancelled,
                stopped: e.stopped,
                request: e.request.clone(),
                submitted: e.submitted.len(),
            })
            .collect();
    }

    fn ven_id(&self) -> String {
        self.registration
            .as_ref()
            .map(|r| r.ven_id.clone())
            .unwrap_or_default()
    }

    async fn persist(&mut self) {
        let (store, book, reg) = (
            self.store.clone(),
            self.book.clone(),
            self.registration.clone(),
        );
        let done = tokio::task::spawn_blocking(move || {
            store.set_registration(reg.as_ref())?;
            store.set_book(&book)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed("store", &e),
            Err(e) => self.failed("store", &e),
        }
        self.publish();
    }

    /// The next moment something is due: a poll, a report, or a step's start.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = self.next_poll;
        if !self.reports.is_empty() {
            wake = wake.min(self.next_report);
        }
        let unix = unix_now();
        let next_start = self
            .book
            .entries
            .values()
            .filter(|e| !e.cancelled || !e.stopped)
            .flat_map(|e| e.steps.iter().map(|s| s.start_s))
            .filter(|&s| s > unix)
            .min();
        if let Some(s) = next_start {
            let secs = u64::try_from(s - unix).unwrap_or(0);
            wake = wake.min(now + Duration::from_secs(secs));
        }
        wake.max(now + MIN_WAKE)
    }

    async fn register(&mut self) -> Result<(), ClientError> {
        let request_id = new_request_id();
        let query = Outgoing::QueryRegistration {
            request_id: request_id.clone(),
        };
        let _ = self.a.client.exchange(&query).await?;
        let create = Outgoing::CreatePartyRegistration {
            request_id,
            registration_id: None,
            ven_id: None,
            ven_name: self.a.config.ven_name.clone(),
        };
        match self.a.client.exchange(&create).await? {
            Incoming::CreatedPartyRegistration {
                response,
                registration_id: Some(registration_id),
                ven_id: Some(ven_id),
                vtn_id,
                ..
            } if response.ok() => {
                tracing::info!(%ven_id, %registration_id, %vtn_id, "openadr: registered");
                self.registration = Some(Registration {
                    ven_id,
                    registration_id,
                    vtn_id,
                });
            }
            other => {
                return Err(ClientError::Http(format!(
                    "registration refused: {other:?}"
                )))
            }
        }
        self.failures = 0;
        self.persist().await;
        Ok(())
    }

    async fn register_report(&mut self) -> Result<(), ClientError> {
        let msg = Outgoing::RegisterReport {
            request_id: new_request_id(),
            ven_id: self.ven_id(),
            report: self.report.clone(),
            created_s: unix_now(),
        };
        let answer = self.a.client.exchange(&msg).await?;
        self.report_registered = true;
        self.handle(answer).await;
        Ok(())
    }

    async fn poll(&mut self) {
        let msg = Outgoing::Poll {
            ven_id: self.ven_id(),
        };
        let answer = self.a.client.exchange(&msg).await;
        self.a.metrics.polls.inc();
        let period = Duration::from_secs_f64(self.a.config.poll_interval_s);
        match answer {
            Ok(m) => {
                self.failures = 0;
                self.next_poll = Instant::now() + period;
                self.handle(m).await;
            }
            Err(e) => {
                self.failed("poll", &e);
                let wait = self.a.client.limits().backoff(self.failures).max(period);
                self.next_poll = Instant::now() + wait;
            }
        }
    }

    /// Act on a VTN's message (the answer to a poll or a registration step).
    async fn handle(&mut self, m: Incoming) {
        match m {
            Incoming::DistributeEvent { request_id, events } => {
                self.distribute(request_id, events).await
            }
            Incoming::RegisteredReport { requests, .. } => {
                self.report_requests(requests, None).await
            }
            Incoming::CreateReport {
                request_id,
                requests,
            } => self.report_requests(requests, Some(request_id)).await,
            Incoming::RequestReregistration | Incoming::CancelPartyRegistration { .. } => {
                tracing::info!("openadr: the VTN asks to register again");
                self.registration = None;
                self.report_registered = false;
                self.reports.clear();
                self.persist().await;
            }
            Incoming::Response(r) if !r.ok() => {
                self.failed("response", &format!("code {}", r.code));
            }
            _ => {}
        }
    }

    async fn distribute(
        &mut self,
        request_id: String,
        events: Vec<crate::io::openadr::messages::Event>,
    ) {
        let shared = self.a.shared.clone();
        let levels = self.levels;
        let capacity = site_capacity(&shared);
        let metered = site_metered_kw(&shared);
        let mut judge_fn = |e: &crate::io::openadr::messages::Event| {
            let has_simple = e
                .signals
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case("simple"));
            let levels = match (levels, has_simple) {
                (Some(l), _) => l,
                (None, false) => [f64::NAN; 4],
                (None, true) => return Err("no [openadr.simple_levels] for a SIMPLE signal".into()),
            };
            let metered = metered.ok_or("the site's meter reading is stale")?;
            judge(e, &levels, capacity, metered)
        };
        let answers = self.book.distribute(&events, unix_now(), &mut judge_fn);
        let m = &self.a.metrics.events;
        for a in answers.iter().filter(|a| a.fresh) {
            m.with_label_values(&["received"]).inc();
            let outcome = match (a.cancelled, a.opt) {
                (true, _) => "cancelled",
                (false, Opt::In) => "opt_in",
                (false, Opt::Out) => "opt_out",
            };
            m.with_label_values(&[outcome]).inc();
            tracing::info!(event = %a.event_id, modification = a.modification, opt = ?a.opt, "openadr: event");
        }
        self.persist().await;
        let responses: Vec<EventResponse> = answers
            .iter()
            .filter(|a| a.fresh && a.required)
            .map(|a| EventResponse {
                event_id: a.event_id.clone(),
                modification: a.modification,
                opt: a.opt,
                code: 200,
            })
            .collect();
        if responses.is_empty() {
            return;
        }
        let msg = Outgoing::CreatedEvent {
            ven_id: self.ven_id(),
            request_id,
            responses,
        };
        match self.a.client.exchange(&msg).await {
            Ok(Incoming::Response(r)) if r.ok() => {}
            Ok(other) => self.failed("created_event", &format!("unexpected answer {other:?}")),
            Err(e) => self.failed("created_event", &e),
        }
    }

    async fn report_requests(&mut self, requests: Vec<ReportRequest>, answer: Option<String>) {
        let ours: Vec<ReportRequest> = requests
            .into_iter()
            .filter(|r| r.specifier_id == REPORT_SPECIFIER)
            .collect();
        for r in &ours {
            self.reports.retain(|o| o.request_id != r.request_id);
            self.reports.push(r.clone());
        }
        self.publish();
        if ours.is_empty() && answer.is_none() {
            return;
        }
        let msg = Outgoing::CreatedReport {
            ven_id: self.ven_id(),
            request_id: answer.unwrap_or_else(new_request_id),
            pending: self.reports.iter().map(|r| r.request_id.clone()).collect(),
        };
        if let Err(e) = self.a.client.exchange(&msg).await {
            self.failed("created_report", &e);
        }
    }

    async fn send_report(&mut self) {
        self.next_report = Instant::now() + self.report.period;
        let Some(kw) = site_metered_kw(&self.a.shared) else {
            // No fresh reading: nothing is reported for this period (never a 0).
            self.failed("report", &"the site's meter reading is stale");
            return;
        };
        for r in self.reports.clone() {
            let msg = Outgoing::UpdateReport {
                request_id: new_request_id(),
                ven_id: self.ven_id(),
                report_request_id: r.request_id.clone(),
                report: self.report.clone(),
                at_s: unix_now(),
                value_kw: kw,
            };
            match self.a.client.exchange(&msg).await {
                Ok(Incoming::UpdatedReport(resp)) if resp.ok() => {
                    self.a.metrics.reports.inc();
                    lock(&self.a.view.0).reports_sent += 1;
                }
                Ok(other) => self.failed("report", &format!("unexpected answer {other:?}")),
                Err(e) => self.failed("report", &e),
            }
        }
    }

    /// Carry out what the book says is due now.
    async fn act(&mut self) {
        let actions = self.book.due(unix_now());
        if actions.is_empty() {
            self.book.prune(unix_now());
            return;
        }
        for action in actions {
            match self.carry_out(&action).await {
                Ok(()) => self.book.done(&action),
                Err(RequestError::Unavailable) => {
                    self.failed("site", &"the site aggregator is not running");
                    break; // again at the next wake
                }
                Err(e) => {
                    self.failed("site", &e);
                    self.book.done(&action); // refused: not retried
                }
            }
        }
        self.persist().await;
    }

    async fn carry_out(&self, action: &Action) -> Result<(), RequestError> {
        let site = lock(&self.a.shared.site)
            .as_ref()
            .map(|r| r.actor().clone())
            .ok_or(RequestError::Unavailable)?;
        let limit = SITE_CALL_LIMIT.as_millis() as u64;
        match action {
            Action::Submit {
                request,
                target,
                duration_s,
                event,
                ..
            } => {
                let metered = site_metered_kw(&self.a.shared);
                let target_kw = match (target, metered) {
                    (crate::io::openadr::book::Target::Setpoint(kw), _) => *kw,
                    (t, Some(m)) => t.resolve(m),
                    (_, None) => {
                        return Err(RequestError::Invalid {
                            field: "target_kw".into(),
                            message: "a delta needs the site's meter reading, which is stale"
                                .into(),
                        })
                    }
                };
                let r = GridRequest::now(request.clone(), Scope::Site, target_kw, *duration_s);
                let receipt = ractor::call_t!(site, SiteMsg::Request, limit, r)
                    .map_err(|_| RequestError::Unavailable)??;
                self.a.metrics.requests.with_label_values(&["submit"]).inc();
                tracing::info!(%event, request = %request, target_kw, dispatch = receipt.dispatch, "openadr: interval dispatched");
                Ok(())
            }
            Action::Stop { request, event } => {
                let found = ractor::call_t!(site, SiteMsg::Cancel, limit, request.clone())
                    .map_err(|_| RequestError::Unavailable)?;
                self.a.metrics.requests.with_label_values(&["stop"]).inc();
                tracing::info!(%event, request = %request, ?found, "openadr: cancelled event stopped");
                Ok(())
            }
        }
    }
}
