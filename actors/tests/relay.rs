//! The hard trip output through its real interface: a node whose segment has
//! `trip = { modbus = { addr, unit, coil } }` against the simulator's relay module
//! (`gridvisor_sim::modbus::relay`) and against a pymodbus server acting as the relay
//! (transports/tests/py/modbus_relay.py), over real sockets.
//!
//! - A trip sets the coil (on = trip asserted), re-asserts it every safety tick (a coil
//!   switched off by hand comes back on), and a relay that hangs or refuses is counted and
//!   retried without stalling the safety actor.
//! - The lockout: the reset is refused while the cause is present (409 causes_present) or
//!   holding (holding, with the time), accepted after; the coil is released, the transition
//!   is logged as an operator's reset and the level checkpointed.
//! - A node restarted while locked out is locked out again (the checkpointed level).

use crate::common::{start, start_in, wait, TestNode, LIMIT};

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gridvisor_actors::config;
use gridvisor_actors::ladder::{FaultKey, Reset, ResetRefused};
use gridvisor_actors::runtime::{Node, ResetError};
use gridvisor_actors::SafeState;
use gridvisor_sim::modbus::{start_relay, Fault, ServerConfig};
use gridvisor_transports::modbus::ExceptionCode;
use serde_json::Value;

const COIL: u16 = 3;
const SEG: &str = "tx";

/// One segment (two bidirectional chargers, a vehicle on each, a meter) whose trip output is
/// `trip`; hold 0.5 s, no keep-alive required.
fn topology(trip: &str) -> String {
    format!(
        "[site]\nid = \"r\"\ncycle_ms = 100\nlease_s = 5\nkeepalive_required = false\n\
         [safety]\nhold_s = 0.5\n\
         [[substations]]\nid = \"sub\"\n\
         [[substations.segments]]\nid = \"{SEG}\"\nrated_kw = 60\ntrip = {trip}\n\
         [[substations.segments.chargers]]\nid = \"c1\"\nmax_kw = 11\nbidirectional = true\n\
         [[substations.segments.chargers]]\nid = \"c2\"\nmax_kw = 11\nbidirectional = true\n\
         [[substations.segments.meters]]\nid = \"m1\"\n\
         [[vehicles]]\nid = \"v1\"\ncharger = \"c1\"\ncapacity_kwh = 60\nsoc_pct = 60\ndepart_s = 36000\nmax_kw = 11\n\
         [[vehicles]]\nid = \"v2\"\ncharger = \"c2\"\ncapacity_kwh = 60\nsoc_pct = 70\ndepart_s = 36000\nmax_kw = 11\n"
    )
}

fn modbus_trip(addr: std::net::SocketAddr) -> String {
    format!("{{ modbus = {{ addr = \"{addr}\", unit = 1, coil = {COIL} }} }}")
}

fn level(node: &Node) -> SafeState {
    node.segment(SEG).expect("the segment").level
}

/// A PTP offset past the trip threshold (100 ms): the safety tick trips the segment.
fn trip(node: &Node) {
    node.sim.ptp.set_offset(Duration::from_millis(150));
}

fn clear(node: &Node) {
    node.sim.ptp.set_offset(Duration::ZERO);
}

fn metric(node: &Node, name: &str) -> f64 {
    let text = node.metrics_text().expect("metrics");
    let prefix = format!("{name}{{segment=\"{SEG}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(f64::NAN, |v| v.trim().parse().unwrap_or(f64::NAN))
}

/// Reset until it is accepted, at most [`LIMIT`]: refused while the cause is present, then
/// while it holds (which must be seen: the hold is 0.5 s), then accepted.
async fn reset_after_the_hold(node: &Node) {
    let started = Instant::now();
    let mut held = false;
    loop {
        match node.reset_segment(SEG) {
            Ok(view) => {
                assert!(held, "reset before the hold passed");
                assert!(!view.locked_out, "{view:?}");
                return;
            }
            Err(ResetError::Refused(ResetRefused::CausesPresent(causes))) => {
                assert!(!held, "the cause came back");
                assert_eq!(causes, vec![FaultKey::ClockDrift]);
            }
            Err(ResetError::Refused(ResetRefused::Holding { causes, .. })) => {
                held = true;
                assert_eq!(causes, vec![FaultKey::ClockDrift]);
            }
            Err(e) => panic!("reset: {e}"),
        }
        assert!(started.elapsed() < LIMIT, "the hold did not pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_opens_the_relay_reasserts_it_and_only_a_reset_after_the_hold_closes_it() {
    let relay = start_relay("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
        .await
        .unwrap();
    let t = start(&topology(&modbus_trip(relay.addr()))).await;
    let node = &t.node;
    assert_eq!(level(node), SafeState::Normal);
    assert_eq!(relay.coil(COIL), Some(false));
    assert_eq!(
        relay.writes(COIL),
        0,
        "a node that starts Normal leaves the relay alone"
    );

    trip(node);
    wait(node, "the trip asserted on the coil", || {
        relay.coil(COIL) == Some(true)
    })
    .await;
    assert_eq!(level(node), SafeState::Tripped);
    wait(node, "the relay's answer seen", || {
        node.segment(SEG).unwrap().trip_relay == Some("open")
    })
    .await;
    assert_eq!(metric(node, "gridvisor_trip_relay_open"), 1.0);

    // Someone closes the breaker at the panel: the next tick opens it again.
    relay.set_coil(COIL, false).unwrap();
    wait(node, "the trip re-asserted", || {
        relay.coil(COIL) == Some(true)
    })
    .await;

    // A module that hangs, then refuses: counted, retried, and the safety actor goes on
    // (the reset answers at once, refused since the cause is still there).
    relay.set_fault(Fault::Hang).unwrap();
    relay.set_coil(COIL, false).unwrap();
    wait(node, "a failed command counted", || {
        metric(node, "gridvisor_trip_relay_failures_total") >= 1.0
    })
    .await;
    let asked = Instant::now();
    let refused = node.reset_segment(SEG).unwrap_err();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the reset waited for the relay"
    );
    assert_eq!(
        refused,
        ResetError::Refused(ResetRefused::CausesPresent(vec![FaultKey::ClockDrift]))
    );
    relay
        .set_fault(Fault::Exception(ExceptionCode::ServerDeviceFailure))
        .unwrap();
    let failed = metric(node, "gridvisor_trip_relay_failures_total");
    wait(node, "an exception counted", || {
        metric(node, "gridvisor_trip_relay_failures_total") > failed
    })
    .await;
    relay.set_fault(Fault::None).unwrap();
    wait(node, "retried once the module answers", || {
        relay.coil(COIL) == Some(true)
    })
    .await;

    // The cause clears: still locked out, and the reset is refused until the hold passed.
    clear(node);
    reset_after_the_hold(node).await;
    wait(node, "the trip released", || {
        relay.coil(COIL) == Some(false)
    })
    .await;
    assert_eq!(level(node), SafeState::Normal);
    let reset = node
        .events()
        .into_iter()
        .rev()
        .find(|e| e.transition.from == SafeState::Tripped)
        .expect("the reset's transition in the log");
    assert_eq!(reset.transition.reset, Some(Reset::Operator));
    wait(node, "the level checkpointed", || {
        let cp: Option<Value> = t.store.get(&format!("safety/{SEG}")).unwrap();
        cp.is_some_and(|cp| cp.to_string().contains("normal"))
    })
    .await;
    // Normal now: nothing to reset, and the released relay is left alone.
    let writes = relay.writes(COIL);
    assert!(matches!(
        node.reset_segment(SEG),
        Err(ResetError::Refused(ResetRefused::NotLockedOut(
            SafeState::Normal
        )))
    ));
    assert!(matches!(
        node.reset_segment("nope"),
        Err(ResetError::Unknown(_))
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.writes(COIL), writes, "not re-asserted while Normal");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_locked_out_is_locked_out_again() {
    let text = topology("{}");
    let t = start(&text).await;
    let relay = t.node.sim.relays[SEG].clone();
    trip(&t.node);
    wait(&t.node, "tripped and the relay open", || relay.open()).await;
    clear(&t.node);
    // Past the hold the segment is still locked out; the checkpoint says Tripped.
    wait(&t.node, "the hold passed", || {
        t.node.segment(SEG).unwrap().causes == vec![FaultKey::Lockout]
    })
    .await;
    let TestNode { node, store, dir } = t;
    node.shutdown().await;
    store.close();
    drop(node);
    let topology = Arc::new(config::parse("test.toml", &text).unwrap());
    let t = start_in(topology, dir).await;
    let view = t.node.segment(SEG).unwrap();
    assert_eq!((view.level, view.locked_out), (SafeState::Tripped, true));
    let relay = t.node.sim.relays[SEG].clone();
    wait(&t.node, "the new run opens its relay", || relay.open()).await;
    reset_or_holding(&t.node).await;
    wait(&t.node, "the relay closed", || !relay.open()).await;
    t.node.shutdown().await;
}

/// After a restart the restored level holds like a cleared cause (`restored`), then the
/// reset is accepted.
async fn reset_or_holding(node: &Node) {
    let started = Instant::now();
    loop {
        match node.reset_segment(SEG) {
            Ok(_) => return,
            Err(ResetError::Refused(ResetRefused::Holding { causes, .. })) => {
                assert_eq!(causes, vec![FaultKey::Restored]);
            }
            Err(e) => panic!("reset: {e}"),
        }
        assert!(started.elapsed() < LIMIT, "the hold did not pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// transports/tests/py/modbus_relay.py, running; killed when dropped.
struct PyRelay {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<Value>,
}

impl PyRelay {
    fn start() -> Self {
        let python = gridvisor_testkit::python();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../transports/tests/py/modbus_relay.py"
        );
        let mut child = Command::new(&python)
            .args([script, "--timeout", "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e})", python.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("modbus_relay.py printed {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("modbus_relay.py (pymodbus 3.16.1) did not start within 30 s");
        let port = first["port"].as_u64().expect("port") as u16;
        PyRelay {
            child,
            port,
            lines: rx,
        }
    }

    /// The next coil write the server reports, at most [`LIMIT`] away.
    fn next_write(&self) -> Value {
        loop {
            let v = self
                .lines
                .recv_timeout(LIMIT)
                .expect("no coil write from the node");
            if !v["write"].is_null() {
                return v["write"].clone();
            }
        }
    }

    /// The coils as the server holds them.
    fn coils(&mut self) -> Vec<bool> {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "read").unwrap();
        loop {
            let v = self.lines.recv_timeout(LIMIT).expect("no coils");
            if let Some(c) = v["coils"].as_array() {
                return c.iter().map(|b| b.as_bool().unwrap()).collect();
            }
        }
    }
}

impl Drop for PyRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymodbus_relay_gets_the_trip_as_function_5_and_the_release_after_the_reset() {
    let mut py = PyRelay::start();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], py.port));
    let t = start(&topology(&modbus_trip(addr))).await;
    let node = &t.node;
    trip(node);
    let w = py.next_write();
    assert_eq!(w["function"], 5, "{w}");
    assert_eq!(
        (w["address"].as_u64(), w["values"].clone()),
        (Some(u64::from(COIL)), serde_json::json!([true]))
    );
    // Re-asserted on the ticks: more writes of the same.
    let again = py.next_write();
    assert_eq!(again, w);
    assert!(py.coils()[usize::from(COIL)]);
    wait(node, "the relay's answer seen", || {
        node.segment(SEG).unwrap().trip_relay == Some("open")
    })
    .await;
    clear(node);
    reset_after_the_hold(node).await;
    let release = loop {
        let w = py.next_write();
        if w["values"] == serde_json::json!([false]) {
            break w;
        }
    };
    assert_eq!(
        (release["function"].as_u64(), release["address"].as_u64()),
        (Some(5), Some(u64::from(COIL)))
    );
    assert!(!py.coils()[usize::from(COIL)]);
    node.shutdown().await;
}
