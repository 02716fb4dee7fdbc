//! Model-based property test: random sequences of crashes, kills, normal exits and time steps
//! run on the real supervisor and on a small executable reference of OTP's rules. After every
//! step the decisions must agree: which children run, which got a new incarnation, and
//! whether the supervisor is still alive.

use std::collections::BTreeSet;
use std::time::Duration;

use gridvisor_supervisors::SupervisorError;
use gridvisor_supervisors::{
    ChildContext, ChildSpec, DynamicSupervisorRef, Restart, Supervisor, SupervisorConfig,
    SupervisorRef,
};
use proptest::prelude::*;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef};

/// Children a case may have (initial ones plus those started during the case).
const MAX_CHILDREN: usize = 8;

/// What the test asks a child to do.
enum Probe {
    Crash,
    Stop,
}

struct Child;

impl Actor for Child {
    type Msg = Probe;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<Probe>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        me: ActorRef<Probe>,
        msg: Probe,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Probe::Crash => Err("crash".into()),
            Probe::Stop => {
                me.stop(None);
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Start one more child (a new spec for static supervisors, arguments for dynamic ones).
    Start,
    Crash(usize),
    Kill(usize),
    NormalExit(usize),
    Advance(u64),
}

/// Operations; time steps include the period itself and one past it, so that the
/// boundary of the intensity window (`now - t <= period` still counts) is exercised.
fn op(period_ms: u64) -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Start),
        3 => (0..MAX_CHILDREN).prop_map(Op::Crash),
        2 => (0..MAX_CHILDREN).prop_map(Op::Kill),
        2 => (0..MAX_CHILDREN).prop_map(Op::NormalExit),
        1 => (0..4000u64).prop_map(Op::Advance),
        1 => prop_oneof![Just(period_ms), Just(period_ms + 1), Just(period_ms / 2)].prop_map(Op::Advance),
    ]
}

fn restart_type() -> impl proptest::strategy::Strategy<Value = Restart> {
    prop_oneof![
        Just(Restart::Permanent),
        Just(Restart::Transient),
        Just(Restart::Temporary)
    ]
}

fn strategy() -> impl proptest::strategy::Strategy<Value = gridvisor_supervisors::Strategy> {
    use gridvisor_supervisors::Strategy as S;
    prop_oneof![
        Just(S::OneForOne),
        Just(S::OneForAll),
        Just(S::RestForOne),
        Just(S::SimpleOneForOne)
    ]
}

/// The reference: OTP's rules, written independently of the supervisor's code.
#[derive(Debug)]
struct Reference {
    strategy: gridvisor_supervisors::Strategy,
    restart: Vec<Restart>,
    /// Known to the supervisor (temporary children, and dynamic children that are not
    /// restarted, are forgotten).
    present: Vec<bool>,
    running: Vec<bool>,
    max_restarts: usize,
    period_ms: u64,
    restart_times: Vec<u64>,
    now_ms: u64,
    alive: bool,
}

impl Reference {
    /// A child exits; returns the children OTP would (re)start, or `None` if the supervisor
    /// gives up.
    fn exit(&mut self, i: usize, abnormal: bool) -> Option<BTreeSet<usize>> {
        use gridvisor_supervisors::Strategy as S;
        self.running[i] = false;
        let restart = match self.restart[i] {
            Restart::Permanent => true,
            Restart::Transient => abnormal,
            Restart::Temporary => false,
        };
        if !restart {
            if self.restart[i] == Restart::Temporary || self.strategy == S::SimpleOneForOne {
                self.present[i] = false;
            }
            return Some(BTreeSet::new());
        }
        let now = self.now_ms;
        self.restart_times.push(now);
        let period = self.period_ms;
        self.restart_times.retain(|&t| now - t <= period);
        if self.restart_times.len() > self.max_restarts {
            self.alive = false;
            self.running.iter_mut().for_each(|r| *r = false);
            return None;
        }
        let group: Vec<usize> = match self.strategy {
            S::OneForOne | S::SimpleOneForOne => vec![i],
            S::OneForAll => (0..self.present.len()).collect(),
            S::RestForOne => (i..self.present.len()).collect(),
        };
        let mut started = BTreeSet::new();
        for j in group {
            if !self.present[j] {
                continue;
            }
            if j != i && self.restart[j] == Restart::Temporary {
                // OTP drops temporary children from a group restart.
                self.present[j] = false;
                self.running[j] = false;
                continue;
            }
            self.running[j] = true;
            started.insert(j);
        }
        Some(started)
    }
}

/// The running children's incarnations, by child index.
async fn snapshot(sup: &SupervisorRef) -> Result<Vec<Option<ActorId>>, SupervisorError> {
    let mut out = vec![None; MAX_CHILDREN];
    for c in sup.which_children().await? {
        let i: usize = c.id.rsplit('-').next().unwrap().parse().unwrap();
        out[i] = c.actor.map(|a| a.get_id());
    }
    Ok(out)
}

fn spec() -> ChildSpec<usize> {
    ChildSpec::worker("c", |ctx: ChildContext, _i: usize| async move {
        ctx.spawn(Child, ()).await
    })
}

async fn run_case(
    strategy: gridvisor_supervisors::Strategy,
    restart: Vec<Restart>,
    initial: usize,
    max_restarts: u32,
    period_ms: u64,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    use gridvisor_supervisors::Strategy as S;
    assert_eq!(restart.len(), MAX_CHILDREN);
    let mut n = initial;
    let config = SupervisorConfig::new("m", strategy)
        .intensity(max_restarts, Duration::from_millis(period_ms));
    let mut restart = restart;
    let sup: SupervisorRef = if strategy == S::SimpleOneForOne {
        // One template: every dynamic child has the same restart type.
        let r = restart[0];
        restart.iter_mut().for_each(|x| *x = r);
        let d = Supervisor::start_dynamic(config, spec().restart(r))
            .await
            .unwrap();
        for i in 0..n {
            d.start_child_named(&format!("c-{i}"), i).await.unwrap();
        }
        (*d).clone()
    } else {
        let specs = (0..n)
            .map(|i| {
                let r = restart[i];
                ChildSpec::worker(&format!("c-{i}"), |ctx: ChildContext, ()| async move {
                    ctx.spawn(Child, ()).await
                })
                .restart(r)
            })
            .collect();
        Supervisor::start(config, specs).await.unwrap()
    };
    let mut model = Reference {
        strategy,
        restart,
        present: vec![true; n],
        running: vec![true; n],
        max_restarts: max_restarts as usize,
        period_ms,
        restart_times: Vec::new(),
        now_ms: 0,
        alive: true,
    };
    let sup_cell: ActorCell = sup.cell();
    for (step, op) in ops.into_iter().enumerate() {
        let before = snapshot(&sup).await.unwrap();
        let (i, abnormal) = match op {
            Op::Start if n == MAX_CHILDREN => continue,
            Op::Start => {
                let id = format!("c-{n}");
                if strategy == S::SimpleOneForOne {
                    let d =
                        DynamicSupervisorRef::<usize>::from_cell(sup.cell(), "m".into()).unwrap();
                    d.start_child_named(&id, n).await.unwrap();
                } else {
                    let spec = ChildSpec::worker(&id, |ctx: ChildContext, ()| async move {
                        ctx.spawn(Child, ()).await
                    })
                    .restart(model.restart[n]);
                    sup.start_child(spec).await.unwrap();
                }
                model.present.push(true);
                model.running.push(true);
                n += 1;
                let after = snapshot(&sup).await.unwrap();
                let running: Vec<bool> = after.iter().take(n).map(Option::is_some).collect();
                prop_assert_eq!(&running, &model.running, "step {}: after a start", step);
                continue;
            }
            Op::Advance(ms) => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                model.now_ms += ms;
                continue;
            }
            Op::Crash(i) | Op::Kill(i) => (i, true),
            Op::NormalExit(i) => (i, false),
        };
        if i >= n || !model.running[i] {
            prop_assert!(
                i >= n || before[i].is_none(),
                "step {step}: model says {i} is down, supervisor runs it"
            );
            continue;
        }
        let cell = sup
            .which_children()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.id == format!("c-{i}"))
            .and_then(|c| c.actor)
            .expect("model says running");
        match op {
            Op::Crash(_) => cell
                .send_message(Probe::Crash)
                .map_err(|_| TestCaseError::fail("send"))?,
            Op::NormalExit(_) => cell
                .send_message(Probe::Stop)
                .map_err(|_| TestCaseError::fail("send"))?,
            Op::Kill(_) => cell.kill(),
            Op::Advance(_) | Op::Start => unreachable!("handled above"),
        }
        cell.wait(None).await.unwrap();
        let expected = model.exit(i, abnormal);
        match expected {
            None => {
                // The supervisor must give up: it stops (its exit event was already queued
                // ahead of anything else it could do).
                prop_assert!(
                    sup_cell.wait(Some(Duration::from_secs(5))).await.is_ok(),
                    "step {step} {op:?}: the reference gives up, the supervisor lives on"
                );
                return Ok(());
            }
            Some(started) => {
                // Supervision events are handled before calls (ractor's port priority), so
                // this call is answered after the exit was decided.
                let after = match snapshot(&sup).await {
                    Ok(a) => a,
                    Err(e) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step} {op:?}: supervisor died: {e}; model {model:?}"
                        )))
                    }
                };
                let real_running: Vec<bool> = after.iter().take(n).map(Option::is_some).collect();
                prop_assert_eq!(
                    &real_running,
                    &model.running,
                    "step {} {:?}: running children differ",
                    step,
                    op
                );
                let real_started: BTreeSet<usize> = (0..n)
                    .filter(|&j| after[j].is_some() && after[j] != before[j])
                    .collect();
                prop_assert_eq!(
                    &real_started,
                    &started,
                    "step {} {:?}: restarted children differ",
                    step,
                    op
                );
                let specs = sup.count_children().await.unwrap().specs;
                prop_assert_eq!(
                    specs,
                    model.present.iter().filter(|p| **p).count(),
                    "step {} {:?}: known children",
                    step,
                    op
                );
            }
        }
    }
    sup.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn supervisor_decides_as_otp_does(
        strategy in strategy(),
        restart in prop::collection::vec(restart_type(), MAX_CHILDREN),
        initial in 1usize..=5,
        max_restarts in 0u32..=4,
        (period_ms, ops) in (1000u64..=10_000).prop_flat_map(|p| (Just(p), prop::collection::vec(op(p), 1..25))),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run_case(strategy, restart, initial, max_restarts, period_ms, ops))?;
    }
}
