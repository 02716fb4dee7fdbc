//! The embedded demo's simulated site, speaking the real protocols on loopback: every
//! inverter and meter is a SunSpec Modbus TCP server, every charger an OCPP 2.1 charge point
//! that connects to the node's CSMS, with the demo's vehicles arriving and leaving on their
//! schedule (each driver's id token is the vehicle's id).
//!
//! Vehicles as they arrive (on by default): the demo's drivers are known only by their id
//! token, from its authorization list ([`DEMO_TOKENS`], configs/demo-tokens.toml, installed
//! as the node's `[authorization]` by [`demo_authorization`]); they come to random free
//! chargers over an hour and move between bays (`gridvisor_sim::ocpp::arrivals`, seeded: the
//! same seed, the same hour). Driver n drives the n-th `[[vehicles]]` battery. The seed is
//! [`DEMO_DEFAULT_ARRIVALS_SEED`] unless `gridvisor run --arrivals SEED` or
//! [`DEMO_ARRIVALS_ENV`] says otherwise; `--arrivals off` (or the variable set to `off`)
//! keeps the fixed bays and schedule of configs/demo.toml, without an authorization list.
//!
//! One task ([`DEMO_TICK`]) steps the physics in real time: the charge points, the inverters,
//! then each segment's meter, which measures the segment's base load plus its chargers minus
//! what its inverter injects. The grid (60 Hz, the ladder's IEEE 1547 bands) is shared, so an
//! islanding shows on every meter and inverter at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gridvisor_actors::authorization::{parse_seed, UnknownTokens};
use gridvisor_actors::config::{
    Authorization, ModbusEndpoint, Ocpp, Topology, DEFAULT_MODBUS_UNIT,
};
use gridvisor_sim::modbus::{
    Grid, GridModel, InverterParams, InverterSim, MeterParams, MeterSim, ServerConfig,
    ServerHandle, SimServer,
};
use gridvisor_sim::ocpp::arrivals::{plan, ArrivalConfig, ArrivalDriver, Driver};
use gridvisor_sim::ocpp::charge_point::{ChargePoint, ChargePointConfig};
use gridvisor_sim::ocpp::vehicle::Vehicle;
use gridvisor_transports::ocpp::client::ClientConfig;
use gridvisor_transports::ocpp::credentials::{generate_password, CredentialsFile};
use gridvisor_transports::ocpp::server::{
    DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_HANDSHAKES_PER_IP,
};
use tokio::task::JoinHandle;

/// How often the demo steps its physics.
pub const DEMO_TICK: Duration = Duration::from_millis(100);
/// The charge points' meter value interval.
pub const DEMO_METER_INTERVAL: Duration = Duration::from_secs(2);
/// PBKDF2 rounds of the demo's generated station passwords: the file's minimum, since they
/// are random (out of reach of a brute force at any count), live only in this process's
/// memory and are checked on loopback.
pub const DEMO_PASSWORD_ITERATIONS: u32 = gridvisor_transports::ocpp::credentials::MIN_ITERATIONS;
/// The demo grid's nominal voltage, V (the meters' `nominal_v`).
pub const DEMO_NOMINAL_V: f64 = 230.0;
/// The demo grid's nominal frequency, Hz (the ladder's bands are IEEE 1547 at 60 Hz).
pub const DEMO_NOMINAL_HZ: f64 = 60.0;
/// The demo grid's noise seed (a fixed seed: the same demo every run).
pub const DEMO_GRID_SEED: u64 = 2026;
/// The environment variable that chooses the arrivals: a seed (an unsigned integer) or
/// `off` (`--arrivals` wins over it).
pub const DEMO_ARRIVALS_ENV: &str = "GRIDVISOR_DEMO_ARRIVALS";
/// The arrivals' seed when neither `--arrivals` nor [`DEMO_ARRIVALS_ENV`] gives one: a seed
/// whose first vehicle arrives within seconds of the start (tested).
pub const DEMO_DEFAULT_ARRIVALS_SEED: u64 = 315;
/// The demo's drivers: an `[authorization]` seed file (configs/demo-tokens.toml).
pub const DEMO_TOKENS: &str = include_str!("../configs/demo-tokens.toml");
/// The name [`DEMO_TOKENS`] is written under in the data directory (and errors name).
pub const DEMO_TOKENS_FILE: &str = "demo-tokens.toml";
/// The demo's authorization store in the data directory.
pub const DEMO_TOKENS_STORE: &str = "demo-tokens.redb";
/// How long `start_chargers` waits for every charge point to connect.
pub const DEMO_CONNECT_LIMIT: Duration = Duration::from_secs(20);

type Power = Arc<Mutex<f64>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulated devices of the demo, served on loopback.
pub struct DemoSite {
    /// (segment, id, server) until the world task takes them (dropping a handle stops it).
    inverters: Vec<(String, String, ServerHandle<InverterSim>)>,
    meters: Vec<(String, String, ServerHandle<MeterSim>)>,
    /// (id, address) of every Modbus device.
    inverter_addrs: Vec<(String, SocketAddr)>,
    meter_addrs: Vec<(String, SocketAddr)>,
    /// (segment, charger, charge point) once started.
    chargers: Vec<(String, String, ChargePoint)>,
    /// Each segment's power at its meter, W, written by the tick.
    segment_power: HashMap<String, Power>,
    /// Modbus requests the inverters and meters answered so far (updated by the tick).
    modbus_requests: Arc<AtomicU64>,
    /// Each charger's password, generated at start (OCPP security profile 1: every station
    /// has its own; the CSMS holds only their hashes).
    passwords: HashMap<String, String>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the demo shows about its devices.
pub struct DemoStatus {
    /// Chargers connected over OCPP / all.
    pub chargers_connected: (usize, usize),
    /// Inverter ids and their Modbus addresses.
    pub inverters: Vec<(String, SocketAddr)>,
    /// Meter ids and their Modbus addresses.
    pub meters: Vec<(String, SocketAddr)>,
}

impl DemoSite {
    /// Start the Modbus devices of `topology` on loopback and write their endpoints (and the
    /// CSMS at `ocpp_listen`) into it.
    pub async fn start_devices(
        topology: &mut Topology,
        ocpp_listen: SocketAddr,
    ) -> Result<DemoSite, String> {
        let mut model = GridModel::new(DEMO_GRID_SEED);
        model.nominal_v = DEMO_NOMINAL_V;
        model.nominal_hz = DEMO_NOMINAL_HZ;
        let grid = Grid::new(model);
        let server = SimServer::new(ServerConfig::default());
        let mut site = DemoSite {
            inverters: Vec::new(),
            meters: Vec::new(),
            inverter_addrs: Vec::new(),
            meter_addrs: Vec::new(),
            chargers: Vec::new(),
            segment_power: HashMap::new(),
            modbus_requests: Arc::new(AtomicU64::new(0)),
            passwords: HashMap::new(),
            tasks: Vec::new(),
        };
        for sub in &mut topology.substations {
            for seg in &mut sub.segments {
                let power: Power = Arc::new(Mutex::new(seg.base_load_kw * 1000.0));
                site.segment_power.insert(seg.id.clone(), power.clone());
                for inv in &mut seg.inverters {
                    let mut p = InverterParams::new(&inv.id);
                    p.w_max = inv.max_kw * 1000.0;
                    p.ramp_w_per_s = p.w_max; // full power in a second
                    p.capacity_wh = inv.max_kw * 2.0 * 1000.0; // a two-hour battery
                    let device = InverterSim::new(p, grid.clone())
                        .map_err(|e| format!("inverter {}: {e}", inv.id))?;
                    let handle = server
                        .start(device)
                        .await
                        .map_err(|e| format!("inverter {}: {e}", inv.id))?;
                    inv.modbus = Some(ModbusEndpoint {
                        addr: handle.addr(),
                        unit: DEFAULT_MODBUS_UNIT,
                        profile: None,
                    });
                    site.inverter_addrs.push((inv.id.clone(), handle.addr()));
                    site.inverters
                        .push((seg.id.clone(), inv.id.clone(), handle));
                }
                for m in &mut seg.meters {
                    let mut p = MeterParams::new(&m.id);
                    p.w_max = (seg.rated_kw * 4.0).max(100.0) * 1000.0;
                    let source = power.clone();
                    let device = MeterSim::new(p, move || *lock(&source), grid.clone())
                        .map_err(|e| format!("meter {}: {e}", m.id))?;
                    let handle = server
                        .start(device)
                        .await
                        .map_err(|e| format!("meter {}: {e}", m.id))?;
                    m.modbus = Some(ModbusEndpoint {
                        addr: handle.addr(),
                        unit: DEFAULT_MODBUS_UNIT,
                        profile: None,
                    });
                    m.nominal_v = DEMO_NOMINAL_V;
                    site.meter_addrs.push((m.id.clone(), handle.addr()));
                    site.meters.push((seg.id.clone(), m.id.clone(), handle));
                }
            }
        }
        let mut credentials = CredentialsFile::default();
        for (_, c) in topology.chargers() {
            let password = generate_password()?;
            credentials
                .set(&c.id, password.as_bytes(), DEMO_PASSWORD_ITERATIONS)
                .map_err(|e| format!("charger {}: {e}", c.id))?;
            site.passwords.insert(c.id.clone(), password);
        }
        topology.ocpp = Some(Ocpp {
            listen: Some(ocpp_listen),
            tls: None,
            passwords: None,
            credentials: Some(Arc::new(credentials)),
            allow_plaintext: false,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP as u64,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP as u64,
            heartbeat_s: gridvisor_actors::config::DEFAULT_OCPP_HEARTBEAT_S,
        });
        Ok(site)
    }

    /// Start a charge point for every charger of `topology`, connecting to the CSMS at
    /// `csms`, and the task that steps the physics and brings the vehicles.
    /// `arrivals`: the seed of random arrivals ([`arrivals_mode`]); None: the fixed schedule.
    pub fn start_chargers(
        &mut self,
        topology: &Arc<Topology>,
        csms: SocketAddr,
        arrivals: Option<u64>,
    ) -> Result<(), String> {
        let started = SystemTime::now();
        for (seg, c) in topology.chargers() {
            let mut client = ClientConfig::new("127.0.0.1", csms.port(), c.id.as_str());
            let password = self
                .passwords
                .get(&c.id)
                .ok_or_else(|| format!("charger {}: no generated password", c.id))?;
            client.password = Some(password.as_bytes().to_vec());
            let mut config = ChargePointConfig::new(client);
            config.max_power_kw = c.max_kw;
            config.default_limit_kw = c.max_kw;
            config.offline_limit_kw = (c.max_kw / 3.0).min(c.max_kw);
            config.meter_interval = DEMO_METER_INTERVAL;
            let (cp, task) = ChargePoint::start(config, started)
                .map_err(|e| format!("charger {}: {e}", c.id))?;
            self.tasks.push(task);
            self.chargers.push((seg.id.clone(), c.id.clone(), cp));
        }
        let arrivals = match arrivals {
            Some(seed) => Some(self.arrivals(topology, seed)?),
            None => None,
        };
        let world = World {
            arrivals,
            topology: topology.clone(),
            chargers: self
                .chargers
                .iter()
                .map(|(s, c, cp)| (s.clone(), c.clone(), cp.clone()))
                .collect(),
            plugged: HashMap::new(),
            segment_power: self.segment_power.clone(),
            modbus_requests: self.modbus_requests.clone(),
            started: Instant::now(),
        };
        let inverters: Vec<_> = self.inverters.drain(..).map(|(s, _, h)| (s, h)).collect();
        let meters: Vec<_> = self.meters.drain(..).map(|(_, _, h)| h).collect();
        self.tasks.push(tokio::spawn(world.run(inverters, meters)));
        Ok(())
    }

    /// The arrivals driver over every charger: the drivers of [`DEMO_TOKENS`], driver n
    /// with the n-th `[[vehicles]]` battery (round robin) and its contract's minimum SoC.
    fn arrivals(&self, topology: &Topology, seed: u64) -> Result<ArrivalDriver, String> {
        let drivers = demo_drivers(topology)?;
        let chargers: Vec<ChargePoint> =
            self.chargers.iter().map(|(_, _, cp)| cp.clone()).collect();
        let visits = plan(drivers.len(), chargers.len(), &ArrivalConfig::new(seed))
            .map_err(|e| format!("{DEMO_ARRIVALS_ENV}: {e}"))?;
        tracing::info!(
            seed,
            drivers = drivers.len(),
            visits = visits.len(),
            "demo: drivers arrive by token at random free chargers"
        );
        Ok(ArrivalDriver::new(
            chargers,
            drivers,
            visits,
            SystemTime::now(),
        ))
    }

    /// How the devices are connected now (`connected`: whether the CSMS has charger `id`).
    pub fn status(&self, connected: impl Fn(&str) -> bool) -> DemoStatus {
        DemoStatus {
            chargers_connected: (
                self.chargers
                    .iter()
                    .filter(|(_, c, _)| connected(c))
                    .count(),
                self.chargers.len(),
            ),
            inverters: self.inverter_addrs.clone(),
            meters: self.meter_addrs.clone(),
        }
    }

    /// Stop every device (the charge points close their connections).
    pub fn stop(self) {
        for (_, _, cp) in &self.chargers {
            let _ = cp.stop();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The demo's world: vehicles on their schedule, physics in real time.
struct World {
    /// Random arrivals ([`DEMO_ARRIVALS_ENV`]) instead of the fixed schedule.
    arrivals: Option<ArrivalDriver>,
    topology: Arc<Topology>,
    chargers: Vec<(String, String, ChargePoint)>,
    /// Charger → the vehicle plugged in by the world.
    plugged: HashMap<String, String>,
    segment_power: HashMap<String, Power>,
    modbus_requests: Arc<AtomicU64>,
    started: Instant,
}

impl World {
    async fn run(
        mut self,
        inverters: Vec<(String, ServerHandle<InverterSim>)>,
        meters: Vec<ServerHandle<MeterSim>>,
    ) {
        let mut interval = tokio::time::interval(DEMO_TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            interval.tick().await;
            let now = Instant::now();
            let dt = now - last;
            last = now;
            match self.arrivals.as_mut() {
                Some(a) => {
                    for e in a.tick(self.started.elapsed()) {
                        tracing::info!(event = ?e, "demo arrival");
                    }
                }
                None => self.vehicles(),
            }
            let mut power: HashMap<&str, f64> = HashMap::new();
            for (seg, _, cp) in &self.chargers {
                cp.step(dt);
                *power.entry(seg).or_default() += cp.snapshot().power_kw * 1000.0;
            }
            for (seg, inv) in &inverters {
                if let Err(e) = inv.step(dt) {
                    tracing::warn!(error = %e, "demo inverter step");
                }
                // The inverter's W is positive when it injects: the meter sees less import.
                let w = inv.with_device(|d| d.state().power_w);
                *power.entry(seg).or_default() -= w;
            }
            for sub in &self.topology.substations {
                for seg in &sub.segments {
                    if let Some(p) = self.segment_power.get(&seg.id) {
                        let w =
                            seg.base_load_kw * 1000.0 + power.get(seg.id.as_str()).unwrap_or(&0.0);
                        *lock(p) = w;
                    }
                }
            }
            for m in &meters {
                if let Err(e) = m.step(dt) {
                    tracing::warn!(error = %e, "demo meter step");
                }
            }
            let served: u64 = inverters.iter().map(|(_, h)| h.requests()).sum::<u64>()
                + meters.iter().map(|h| h.requests()).sum::<u64>();
            self.modbus_requests.store(served, Ordering::Relaxed);
        }
    }

    /// Plug in and unplug the demo's vehicles on their schedule.
    fn vehicles(&mut self) {
        let t = self.started.elapsed().as_secs_f64();
        for v in &self.topology.vehicles {
            let Some((_, _, cp)) = self.chargers.iter().find(|(_, c, _)| *c == v.charger) else {
                continue;
            };
            let present = v.arrive_s <= t && t < v.depart_s;
            let mine = self.plugged.get(&v.charger) == Some(&v.id);
            if present && !self.plugged.contains_key(&v.charger) {
                let bidirectional = self
                    .topology
                    .charger(&v.charger)
                    .is_some_and(|c| c.bidirectional);
                let vehicle = Vehicle::new(
                    v.capacity_kwh,
                    v.soc_pct / 100.0,
                    (v.min_soc_pct / 100.0).min(v.soc_pct / 100.0),
                    v.max_kw,
                    v.max_kw,
                    bidirectional,
                );
                match vehicle {
                    Ok(vehicle) => match cp.plug_in_with_token(vehicle, Some(v.id.clone())) {
                        Ok(()) => {
                            self.plugged.insert(v.charger.clone(), v.id.clone());
                        }
                        Err(e) => tracing::warn!(vehicle = %v.id, error = %e, "demo plug-in"),
                    },
                    Err(e) => tracing::warn!(vehicle = %v.id, error = %e, "demo vehicle"),
                }
            } else if mine && !present {
                if let Err(e) = cp.unplug() {
                    tracing::warn!(vehicle = %v.id, error = %e, "demo unplug");
                }
                self.plugged.remove(&v.charger);
            }
        }
    }
}

/// Reads the demo's counters from another task.
pub struct Reporter {
    modbus_requests: Arc<AtomicU64>,
}

impl Reporter {
    /// Modbus requests the simulated devices answered so far.
    pub fn modbus_requests(&self) -> u64 {
        self.modbus_requests.load(Ordering::Relaxed)
    }
}

impl DemoSite {
    /// A reader of the demo's counters.
    pub fn reporter(&self) -> Reporter {
        Reporter {
            modbus_requests: self.modbus_requests.clone(),
        }
    }
}

/// The demo's SIMPLE levels (kW at the site's meter), as configs/demo.toml's comment shows.
pub const DEMO_SIMPLE_LEVELS: [f64; 4] = [0.0, -20.0, -60.0, -100.0];

/// `[openadr]` for the demo (`gridvisor run --openadr-vtn URL`): the values configs/demo.toml
/// documents, the store under the data directory. The table is read by the topology's own
/// reader, so a bad URL is reported as `[openadr]`'s would be.
pub fn demo_openadr(
    vtn_url: &str,
    data: &std::path::Path,
) -> Result<gridvisor_actors::config::OpenAdr, String> {
    let l = DEMO_SIMPLE_LEVELS;
    let table = format!(
        "\n[openadr]\nvtn_url = {vtn_url:?}\nven_name = \"demo-site\"\nstore = {store:?}\n\
         [openadr.simple_levels]\n0 = {:?}\n1 = {:?}\n2 = {:?}\n3 = {:?}\n",
        l[0],
        l[1],
        l[2],
        l[3],
        store = data.join("openadr.redb").display().to_string(),
    );
    let text = format!("{}{table}", gridvisor_actors::config::DEMO);
    let topology =
        gridvisor_actors::config::parse("--openadr-vtn", &text).map_err(|e| e.to_string())?;
    topology
        .openadr
        .ok_or_else(|| "--openadr-vtn: no [openadr] table".to_owned())
}

/// The demo's drivers: each token of [`DEMO_TOKENS`] with the n-th `[[vehicles]]` battery
/// of `topology` (round robin), discharging no lower than its contract's minimum SoC.
fn demo_drivers(topology: &Topology) -> Result<Vec<Driver>, String> {
    let tokens = parse_seed(DEMO_TOKENS_FILE, DEMO_TOKENS)?;
    if topology.vehicles.is_empty() {
        return Err("the demo's arrivals need [[vehicles]] batteries".to_owned());
    }
    tokens
        .into_iter()
        .zip(topology.vehicles.iter().cycle())
        .map(|((id, contract), v)| {
            let min = (contract.min_soc_pct / 100.0).min(v.soc_pct / 100.0);
            let vehicle = Vehicle::new(
                v.capacity_kwh,
                v.soc_pct / 100.0,
                min,
                v.max_kw,
                v.max_kw,
                contract.v2g,
            )
            .map_err(|e| format!("driver {}: {e}", id.value))?;
            Ok(Driver {
                token: id.value,
                vehicle,
                target_soc: (contract.target_soc_pct / 100.0).clamp(min, 1.0),
                min_v2x_soc: min,
            })
        })
        .collect()
}

/// The demo's `[authorization]` (with arrivals on): [`DEMO_TOKENS`] written to
/// `data`/[`DEMO_TOKENS_FILE`] as the seed of `data`/[`DEMO_TOKENS_STORE`] (read once, when
/// the store is new); unknown tokens are refused.
pub fn demo_authorization(data: &std::path::Path) -> Result<Authorization, String> {
    parse_seed(DEMO_TOKENS_FILE, DEMO_TOKENS)?;
    std::fs::create_dir_all(data)
        .map_err(|e| format!("cannot create the data directory {}: {e}", data.display()))?;
    let seed = data.join(DEMO_TOKENS_FILE);
    std::fs::write(&seed, DEMO_TOKENS)
        .map_err(|e| format!("cannot write {}: {e}", seed.display()))?;
    Ok(Authorization {
        store: data.join(DEMO_TOKENS_STORE),
        seed: Some(seed),
        unknown: UnknownTokens::Refuse,
    })
}

/// The arrivals' seed from `--arrivals` (`flag`), else [`DEMO_ARRIVALS_ENV`]'s value (`env`),
/// else [`DEMO_DEFAULT_ARRIVALS_SEED`]; None: `off`, the fixed schedule.
pub fn arrivals_mode(flag: Option<&str>, env: Option<&str>) -> Result<Option<u64>, String> {
    let (source, value) = match (flag, env) {
        (Some(v), _) => ("--arrivals", v),
        (None, Some(v)) => (DEMO_ARRIVALS_ENV, v),
        (None, None) => return Ok(Some(DEMO_DEFAULT_ARRIVALS_SEED)),
    };
    match value.trim() {
        "off" => Ok(None),
        v => v.parse::<u64>().map(Some).map_err(|_| {
            format!("{source}={value:?}: expected a seed (an unsigned integer) or \"off\"")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arrivals_seed_is_read_or_named_as_wrong() {
        let d = Some(DEMO_DEFAULT_ARRIVALS_SEED);
        assert_eq!(arrivals_mode(None, None), Ok(d));
        assert_eq!(arrivals_mode(None, Some(" 7 ")), Ok(Some(7)));
        assert_eq!(arrivals_mode(Some("off"), Some("7")), Ok(None));
        assert_eq!(arrivals_mode(None, Some("off")), Ok(None));
        assert_eq!(arrivals_mode(Some("3"), Some("off")), Ok(Some(3)));
        let e = arrivals_mode(None, Some("seven")).unwrap_err();
        assert!(e.contains("GRIDVISOR_DEMO_ARRIVALS=\"seven\""), "{e}");
        let e = arrivals_mode(Some("-1"), None).unwrap_err();
        assert!(e.contains("--arrivals=\"-1\""), "{e}");
    }

    #[test]
    fn every_demo_driver_has_a_contract_and_a_battery_and_arrives_early_by_default() {
        let topology = gridvisor_actors::config::demo();
        let drivers = demo_drivers(&topology).unwrap();
        assert_eq!(drivers.len(), 13);
        let tokens: std::collections::BTreeSet<&str> =
            drivers.iter().map(|d| d.token.as_str()).collect();
        assert_eq!(tokens.len(), 13, "distinct tokens");
        // None is a [[vehicles]] id: a configured vehicle's session is bound to its bay.
        assert!(topology
            .vehicles
            .iter()
            .all(|v| !tokens.contains(v.id.as_str())));
        let chargers = topology.chargers().count();
        let visits = plan(
            13,
            chargers,
            &ArrivalConfig::new(DEMO_DEFAULT_ARRIVALS_SEED),
        )
        .unwrap();
        assert!(
            visits[0].arrive < Duration::from_secs(10),
            "{:?}",
            visits[0]
        );
        assert!(
            visits[3].arrive < Duration::from_secs(60),
            "{:?}",
            visits[3]
        );
        // Over the hour, some driver parks at two bays.
        let moved = (0..13).any(|d| {
            let bays: std::collections::BTreeSet<usize> = visits
                .iter()
                .filter(|v| v.driver == d)
                .map(|v| v.charger)
                .collect();
            bays.len() >= 2
        });
        assert!(moved, "{visits:?}");
    }

    #[test]
    fn the_demo_authorization_seeds_a_store_that_accepts_its_drivers_anywhere() {
        use gridvisor_actors::authorization::{AuthStore, Decision, TokenId};
        let dir = tempfile::tempdir().unwrap();
        let a = demo_authorization(dir.path()).unwrap();
        let store = AuthStore::open(&a.store, a.seed.as_deref(), a.unknown).unwrap();
        let fleet = TokenId::new("ISO14443", "04A1C0DE01").unwrap();
        assert!(matches!(store.decide(&fleet), Decision::Accepted { .. }));
        let stranger = TokenId::new("ISO14443", "ev-1").unwrap();
        assert_eq!(store.decide(&stranger), Decision::Unknown);
    }
}
