//! The site topology, read from TOML: substations, their transformer segments, the chargers,
//! inverters and meters on each segment, the vehicles that visit the chargers, and the safety
//! settings of the segment ladders.
//!
//! # Reading
//!
//! [`parse`] reads in two passes. The first walks toml's spanned document
//! ([`toml::de::DeTable`]) by hand rather than through serde, so that *every* problem is found
//! in one run: unknown keys, values of the wrong type and missing keys are collected, not
//! returned at the first. It records the byte offset of every value it reads under the
//! value's dotted path (`substations[0].segments[1].chargers[2].max_kw`), fills in the
//! documented defaults, and builds a plain [`Topology`]. The second pass ([`Topology::validate`]
//! runs the same checks on any topology, parsed, [`generated`] or built by hand) checks ranges
//! and cross references and points each error at the value it is about; a default value that
//! is wrong only in combination with another is reported at the value that was written down.
//! A value that already failed to read is not validated again, so one mistake gives one error.
//!
//! A TOML syntax error stops reading: toml reports one, with its position.
//!
//! # Invariants of a topology that passed validation
//!
//! * Every id is 1 to [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 _ . -` (ids become actor path
//!   segments), and ids are unique per kind across the whole site (substations, segments,
//!   chargers, inverters, meters, vehicles).
//! * Every number is finite and inside the range its field documents.
//! * Every segment has at least one meter; its safe default power is between 0 (a fallback
//!   never discharges) and its rating.
//! * Every vehicle names an existing charger, and two vehicles on one charger are never there
//!   at the same time: their `[arrive_s, depart_s)` intervals do not overlap.
//!
//! Errors carry the file, a 1-based line and column (the column counts characters), the
//! field's dotted path and a message; [`ConfigError`] prints as `file:line:column: field:
//! message`. Line and column are 0 when there is no source text to point into (a topology
//! that was built in code, or a file that could not be read).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gridvisor_transports::ocpp::server::{
    DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_HANDSHAKES_PER_IP,
};
use serde::Serialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::ladder::{GridFrequency, LadderConfig, Stages, TripBand};

mod clock;
mod grid_services;
mod openadr;
pub use clock::{
    ClockConfig, ClockSourceKind, DEFAULT_CLOCK_POLL_MS, DEFAULT_CLOCK_STALE_MS,
    DEFAULT_CLOCK_TIMEOUT_MS, DEFAULT_PTP4L_PATH, MIN_CLOCK_POLL_MS,
};
pub use grid_services::GridServices;
pub use openadr::{
    OpenAdr, OpenAdrTls, DEFAULT_OPENADR_POLL_S, DEFAULT_OPENADR_REPORT_S, DEFAULT_OPENADR_STORE,
};

/// The embedded demo site (`configs/demo.toml`).
pub const DEMO: &str = include_str!("../../configs/demo.toml");
/// The file name errors in [`DEMO`] are reported against.
pub const DEMO_FILE_NAME: &str = "configs/demo.toml";

/// The CSMS's ws address when `[ocpp]` names none.
pub const DEFAULT_OCPP_LISTEN: &str = "0.0.0.0:8080";
/// The CSMS's wss address when `[ocpp.tls]` names none.
pub const DEFAULT_OCPP_TLS_LISTEN: &str = "0.0.0.0:8443";
/// The heartbeat interval given to charge points when `[ocpp]` names none, s.
pub const DEFAULT_OCPP_HEARTBEAT_S: u64 = 60;
/// The longest heartbeat interval accepted, s (one day).
pub const MAX_OCPP_HEARTBEAT_S: u64 = 86_400;
/// The MQTT broker telemetry goes to when `[mqtt]` names none (1883 is MQTT's port; 8883 is
/// the usual one with `[mqtt.tls]`).
pub const DEFAULT_MQTT_BROKER: &str = "127.0.0.1:1883";
/// The telemetry publish period when `[mqtt]` names none, ms.
pub const DEFAULT_MQTT_INTERVAL_MS: u64 = 1_000;
/// The shortest accepted telemetry publish period, ms.
pub const MIN_MQTT_INTERVAL_MS: u64 = 100;
/// The longest accepted telemetry publish period, ms (one hour).
pub const MAX_MQTT_INTERVAL_MS: u64 = 3_600_000;
/// The longest accepted MQTT topic prefix, in bytes.
pub const MAX_MQTT_TOPIC_PREFIX_LEN: usize = 256;
/// The longest accepted MQTT client id, in bytes.
pub const MAX_MQTT_CLIENT_ID_LEN: usize = 256;
/// A Modbus device's unit id when none is given.
pub const DEFAULT_MODBUS_UNIT: u8 = 1;
/// A meter's nominal voltage when none is given, V.
pub const DEFAULT_NOMINAL_V: f64 = 230.0;

/// The longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// The largest configuration text accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;
/// The control and dispatch period when none is given, ms.
pub const DEFAULT_CYCLE_MS: u64 = 1_000;
/// The shortest accepted control and dispatch period, ms.
pub const MIN_CYCLE_MS: u64 = 10;
/// The longest accepted control and dispatch period, ms.
pub const MAX_CYCLE_MS: u64 = 60_000;
/// How long a setpoint stays valid when none is given, s.
pub const DEFAULT_LEASE_S: f64 = 30.0;
/// Whether the grid controller's keep-alive is required when not said otherwise.
pub const DEFAULT_KEEPALIVE_REQUIRED: bool = true;
/// The longest accepted duration setting (leases, hold times, time constants), s: one week.
pub const MAX_DURATION_S: f64 = 7.0 * 24.0 * 3600.0;
/// The latest accepted arrival or departure of a vehicle, s since the run's start: one year.
pub const MAX_SESSION_TIME_S: f64 = 366.0 * 24.0 * 3600.0;
/// The largest accepted charger rating, kW.
pub const MAX_CHARGER_KW: f64 = 1_000.0;
/// The largest accepted battery capacity, kWh.
pub const MAX_CAPACITY_KWH: f64 = 1_000.0;
/// The upper bound of every state-of-charge setting, %.
pub const MAX_SOC_PCT: f64 = 100.0;
/// The state of charge a vehicle must keep when none is given, %.
pub const DEFAULT_MIN_SOC_PCT: f64 = 20.0;
/// The state of charge a vehicle should leave with when none is given, %.
pub const DEFAULT_TARGET_SOC_PCT: f64 = 80.0;
/// A segment's fallback power when none is given, kW.
pub const DEFAULT_SAFE_DEFAULT_KW: f64 = 0.0;
/// A segment's uncontrolled load when none is given, kW.
pub const DEFAULT_BASE_LOAD_KW: f64 = 0.0;
/// The transformer's thermal time constant when none is given, s.
pub const DEFAULT_TIME_CONSTANT_S: f64 = 1_800.0;
/// The ambient temperature when none is given, °C.
pub const DEFAULT_AMBIENT_C: f64 = 30.0;
/// The hot-spot rise above ambient at rated load when none is given, °C.
pub const DEFAULT_RATED_RISE_C: f64 = 65.0;
/// The hot-spot temperature limit when none is given, °C.
pub const DEFAULT_LIMIT_C: f64 = 110.0;
/// How long a cleared fault keeps its level when none is given, s (IEEE 1547's default).
pub const DEFAULT_HOLD_S: f64 = 300.0;
/// Keep-alive silence before ChargeOnly when none is given, s.
pub const DEFAULT_KEEPALIVE_TIMEOUT_S: f64 = 5.0;
/// PTP offset above which a segment goes ChargeOnly when none is given, ms.
pub const DEFAULT_PTP_CHARGE_ONLY_MS: f64 = 1.0;
/// PTP offset above which a segment trips when none is given, ms.
pub const DEFAULT_PTP_TRIP_MS: f64 = 100.0;
/// Inverter temperature where derating starts when none is given, °C.
pub const DEFAULT_DERATE_START_C: f64 = 65.0;
/// Inverter temperature where the derated cap reaches 0 when none is given, °C.
pub const DEFAULT_DERATE_ZERO_C: f64 = 85.0;
/// The grid's nominal frequency when `[safety] nominal_hz` is not given (allowed only while
/// no meter is read over Modbus: the in-process simulation runs at 60 Hz).
pub const DEFAULT_NOMINAL_HZ: GridFrequency = GridFrequency::Hz60;
/// The ROCOF trip threshold when none is given, Hz/s ([`crate::ladder::DEFAULT_ROCOF_HZ_PER_S`]).
pub const DEFAULT_ROCOF_HZ_PER_S: f64 = crate::ladder::DEFAULT_ROCOF_HZ_PER_S;
/// The largest accepted ROCOF threshold, Hz/s.
pub const MAX_ROCOF_HZ_PER_S: f64 = 100.0;
/// The ROCOF window when none is given, ms ([`crate::ladder::DEFAULT_ROCOF_WINDOW`]).
pub const DEFAULT_ROCOF_WINDOW_MS: u64 = 500;
/// The accepted ROCOF windows, ms: from one cycle at 50 Hz to 10 s.
pub const ROCOF_WINDOW_MS: (u64, u64) = (20, 10_000);
/// The bound on a segment's last good grid reading's age when none is given, ms.
pub const DEFAULT_MAX_READING_AGE_MS: u64 = 500;
/// The accepted reading-age bounds, ms: at least two meter polls (`runtime::METER_POLL`,
/// 50 ms), at most 10 s (beyond IEEE 1547's 2 s to cease to energize only for a meter that
/// cannot be polled faster, which the operator must know).
pub const MAX_READING_AGE_MS: (u64, u64) = (100, 10_000);
/// Failed inverter temperature reads in a row that count as over-temperature when none is
/// given (at the 1 s inverter poll: 3 s).
pub const DEFAULT_TEMPERATURE_READ_FAILURES: u32 = 3;
/// The largest accepted `temperature_read_failures`.
pub const MAX_TEMPERATURE_READ_FAILURES: u32 = 1_000;

/// [`generated`]: a segment's rating as a share of its chargers' summed rating (diversity).
pub const GENERATED_DIVERSITY: f64 = 0.6;
/// [`generated`]: the smallest segment rating, kW (a segment without chargers still has one).
pub const GENERATED_MIN_RATED_KW: f64 = 50.0;
/// [`generated`]: every segment's battery inverter, kW.
pub const GENERATED_INVERTER_KW: f64 = 100.0;
/// [`generated`]: the hold time, s (short, so benchmarks see recoveries).
pub const GENERATED_HOLD_S: f64 = 5.0;
/// [`generated`]: every n-th charger (the last of each n) cannot discharge.
pub const GENERATED_UNIDIRECTIONAL_EVERY: usize = 4;
/// [`generated`]: the charger ratings and vehicle limits drawn from, kW.
pub const GENERATED_KW: [f64; 2] = [11.0, 22.0];
/// [`generated`]: battery capacities are drawn from `[lo, hi)`, kWh.
pub const GENERATED_CAPACITY_KWH: (f64, f64) = (40.0, 100.0);
/// [`generated`]: states of charge on arrival are drawn from `[lo, hi)`, %.
pub const GENERATED_SOC_PCT: (f64, f64) = (30.0, 90.0);
/// [`generated`]: departures are drawn from `[lo, hi)`, s (1 to 10 h; all arrive at 0).
pub const GENERATED_DEPART_S: (f64, f64) = (3_600.0, 36_000.0);

/// The whole site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    /// Site-wide settings.
    pub site: Site,
    /// The substations and their segments.
    pub substations: Vec<Substation>,
    /// The vehicles that visit the site's chargers.
    pub vehicles: Vec<Vehicle>,
    /// The safe-state ladder settings of every segment.
    pub safety: Safety,
    /// The CSMS the site's chargers connect to over OCPP (`[ocpp]`); None: the chargers are
    /// simulated in-process.
    pub ocpp: Option<Ocpp>,
    /// Telemetry export to an MQTT broker (`[mqtt]`); None: no export.
    pub mqtt: Option<Mqtt>,
    /// How the node labels its per-actor metrics (`[metrics]`).
    pub metrics: Metrics,
    /// Who may call the grid and admin APIs (`[api]`); the default: no TLS, no credentials,
    /// actor kill off.
    pub api: Api,
    /// The id tokens that may charge (`[authorization]`); None: the `[[vehicles]]` binding
    /// (each vehicle's token at its own charger only: the simulated demo and benchmarks).
    pub authorization: Option<Authorization>,
    /// The node as an OpenADR 2.0b VEN (`[openadr]`); None: no VTN.
    pub openadr: Option<OpenAdr>,
    /// `[grid_services]`: frequency response (droop), off by default.
    pub grid_services: GridServices,
}

/// `[authorization]`: the site's authorization list (`crate::authorization`). Paths are
/// relative to the topology file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authorization {
    /// The list's redb file (`store`, default [`DEFAULT_AUTHORIZATION_STORE`]).
    pub store: std::path::PathBuf,
    /// A TOML file of `[[tokens]]` read when the store is new (`seed`), if any.
    pub seed: Option<std::path::PathBuf>,
    /// What happens to a token not on the list (`unknown = "refuse" | "charge_only"`,
    /// default refuse).
    pub unknown: crate::authorization::UnknownTokens,
}

/// `[authorization] store` when none is given.
pub const DEFAULT_AUTHORIZATION_STORE: &str = "tokens.redb";

/// `[api]`: TLS and credentials of the grid and admin APIs, and whether the admin API may
/// kill actors. Authentication is configured when `[api.tls]` is (with `tokens`,
/// `client_ca` or both); without it the node serves plain HTTP and only on loopback unless
/// run with `--insecure-no-auth`. Paths are read when the node starts, relative to its
/// working directory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Api {
    /// TLS of both APIs (`[api.tls]`), if any.
    pub tls: Option<ApiTls>,
    /// The tokens file: one line per credential, `<sha256 hex of the token> <identity>
    /// <role>[,<role>…]` (`-` in place of the hash: an identity that only presents a client
    /// certificate). Needs `[api.tls]`.
    pub tokens: Option<std::path::PathBuf>,
    /// `POST /api/actors/kill` is served (rate-limited); default false: refused with 403.
    pub actor_kill: bool,
}

/// `[api.tls]`: the certificate both APIs serve and, with `client_ca`, mutual TLS (a client
/// is the identity its certificate's subject CN names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTls {
    /// The certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// Its private key (PEM).
    pub key: std::path::PathBuf,
    /// The CA that issues client certificates (PEM); present: clients may authenticate with
    /// a certificate.
    pub client_ca: Option<std::path::PathBuf>,
}

/// `[metrics]`: the granularity of per-actor series. Chargers, segment actors, inverters and
/// meters always have series per actor; sessions (one per vehicle, the many) have them per
/// actor only when asked, since 100,000 sessions would add 100,000 series to every scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Metrics {
    /// `sessions = "aggregated"` (the default: one series per segment) or `"per_actor"`
    /// (each session its own series, and its vehicle's SoC).
    pub sessions: Granularity,
}

/// Per actor, or one series for all alike actors of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One series for all.
    #[default]
    Aggregated,
    /// One series each.
    PerActor,
}

/// Telemetry export to an MQTT broker (`[mqtt]`): every `interval_ms` the node publishes
/// (QoS 0, retained) one message per segment, `{topic_prefix}/segments/{id}`, and one per
/// charger, `{topic_prefix}/chargers/{id}` (see `crate::io::mqtt`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mqtt {
    /// The broker's address (default [`DEFAULT_MQTT_BROKER`]; 8883 is usual with TLS).
    pub broker: SocketAddr,
    /// The first levels of every topic (default `gridvisor/{site id}`): not empty, at most
    /// [`MAX_MQTT_TOPIC_PREFIX_LEN`] bytes, no wildcard (`+`, `#`), no control character, not
    /// starting with `$` (the broker's own topics) nor ending with `/`.
    pub topic_prefix: String,
    /// The publish period, ms (default [`DEFAULT_MQTT_INTERVAL_MS`], within
    /// [`MIN_MQTT_INTERVAL_MS`]..=[`MAX_MQTT_INTERVAL_MS`]).
    pub interval_ms: u64,
    /// The MQTT client id (default `gridvisor-{site id}`), 1 to [`MAX_MQTT_CLIENT_ID_LEN`]
    /// bytes without control characters.
    pub client_id: String,
    /// TLS to the broker (`[mqtt.tls]`), if any.
    pub tls: Option<MqttTls>,
}

/// TLS to the MQTT broker (`[mqtt.tls]`). Paths are read when the node starts, relative to
/// its working directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MqttTls {
    /// The CA that issued the broker's certificate (PEM).
    pub ca: std::path::PathBuf,
    /// A client certificate chain (PEM) for brokers that require one; always with `key`.
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM); always with `cert`.
    pub key: Option<std::path::PathBuf>,
    /// The name the broker's certificate must carry: a DNS name or an IP address (default:
    /// the broker's IP address).
    pub server_name: String,
}

/// The CSMS listener (`[ocpp]`): its presence means every charger of the site is a real
/// OCPP charge point that connects to `ws://{listen}/ocpp/{charger id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ocpp {
    /// The ws address (security profile 1); default [`DEFAULT_OCPP_LISTEN`] when there is no
    /// `[ocpp.tls]`, none (no plaintext listener) when there is one and `listen` is not given.
    pub listen: Option<SocketAddr>,
    /// The credentials file (`passwords`): one salted PBKDF2 hash per station
    /// (`gridvisor_transports::ocpp::credentials`, written by `gridvisor ocpp-password`).
    /// Required with a ws listener or a profile 2 wss one: a password is mandatory there, and
    /// a station absent from the file is refused. [`load`] makes a relative path relative to
    /// the topology file; the file is read when the CSMS starts.
    pub passwords: Option<std::path::PathBuf>,
    /// Credentials given in code instead of a file (the embedded demo generates its stations'
    /// passwords at start); used before `passwords`.
    #[serde(skip)]
    pub credentials:
        Option<std::sync::Arc<gridvisor_transports::ocpp::credentials::CredentialsFile>>,
    /// Plain ws on a non-loopback address (`allow_plaintext`, default false): passwords and
    /// setpoints then cross the network in clear; the node announces it at start.
    pub allow_plaintext: bool,
    /// Connections (handshaking or open) from one address (`max_connections_per_ip`, default
    /// `gridvisor_transports::ocpp::server::DEFAULT_MAX_CONNECTIONS_PER_IP`; loopback exempt).
    pub max_connections_per_ip: u64,
    /// Unauthenticated handshakes in progress from one address (`max_handshakes_per_ip`,
    /// default `DEFAULT_MAX_HANDSHAKES_PER_IP`; loopback exempt).
    pub max_handshakes_per_ip: u64,
    /// The heartbeat interval the CSMS gives charge points at boot, s (default
    /// [`DEFAULT_OCPP_HEARTBEAT_S`]).
    pub heartbeat_s: u64,
    /// The wss listener (`[ocpp.tls]`), if any.
    pub tls: Option<OcppTls>,
}

/// The CSMS's wss listener (`[ocpp.tls]`): security profile 2 (TLS and the password) or, with
/// `client_ca`, profile 3 (mutual TLS: a charge point is who its certificate's subject CN
/// says). Paths are read when the node starts, relative to its working directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OcppTls {
    /// The wss address, default [`DEFAULT_OCPP_TLS_LISTEN`].
    pub listen: SocketAddr,
    /// The CSMS's certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// Its private key (PEM).
    pub key: std::path::PathBuf,
    /// The CA that issues charge point certificates (PEM); present: profile 3.
    pub client_ca: Option<std::path::PathBuf>,
    /// A CRL of that CA (PEM or DER; only with `client_ca`): a station certificate it revokes
    /// is refused at the TLS handshake.
    pub crl: Option<std::path::PathBuf>,
}

/// Where a device speaks Modbus TCP (`modbus = { addr = "host:port", unit = 1 }`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModbusEndpoint {
    /// The device's socket address.
    pub addr: SocketAddr,
    /// Its Modbus unit id (default [`DEFAULT_MODBUS_UNIT`]).
    pub unit: u8,
    /// A plain register profile (a TOML file of points, see
    /// `gridvisor_transports::modbus::profile`) for a device without SunSpec; None: SunSpec.
    pub profile: Option<std::path::PathBuf>,
}

/// Site-wide settings (`[site]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Site {
    /// The site's id.
    pub id: String,
    /// The control and dispatch period, ms ([`MIN_CYCLE_MS`]..=[`MAX_CYCLE_MS`], default
    /// [`DEFAULT_CYCLE_MS`]).
    pub cycle_ms: u64,
    /// How long a setpoint stays valid without renewal, s (> 0, default
    /// [`DEFAULT_LEASE_S`]).
    pub lease_s: f64,
    /// Whether a silent grid controller moves segments to ChargeOnly (default true).
    pub keepalive_required: bool,
}

/// A substation (`[[substations]]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Substation {
    /// The substation's id.
    pub id: String,
    /// Its transformer segments.
    pub segments: Vec<Segment>,
}

/// One transformer segment (`[[substations.segments]]`), the unit of the safe-state ladder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// The segment's id.
    pub id: String,
    /// The transformer's rating, kW (> 0).
    pub rated_kw: f64,
    /// The power the segment falls back to without a valid setpoint, kW (0..=`rated_kw`,
    /// never negative: a fallback never discharges; default 0).
    pub safe_default_kw: f64,
    /// An uncontrolled load the segment's meter sees besides the chargers, kW (>= 0,
    /// default 0).
    pub base_load_kw: f64,
    /// The transformer's thermal model parameters.
    pub thermal: Thermal,
    /// The chargers on the segment.
    pub chargers: Vec<Charger>,
    /// The inverters on the segment (stationary batteries, PV).
    pub inverters: Vec<Inverter>,
    /// The meters on the segment (at least one).
    pub meters: Vec<Meter>,
    /// The segment's trip output (`trip = { ... }`): a relay or breaker the node opens when
    /// the segment trips; None: Tripped writes 0 kW setpoints only.
    pub trip: Option<Trip>,
}

/// A segment's trip output (`trip = { modbus = { addr, unit, coil }, auto_reclose_s = N }`):
/// a relay or breaker behind a Modbus I/O module. The coil's polarity: **on (1) = trip
/// asserted, the breaker open**; off (0) = trip released, the breaker may close. See
/// `crate::io::relay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trip {
    /// Where the coil is; None: a relay simulated in-process (the demo, tests, chaos), as for
    /// an inverter or meter without `modbus`.
    pub modbus: Option<CoilEndpoint>,
    /// Automatic reclose: the segment leaves its lockout by itself this long after its trip's
    /// causes cleared and held for the hold time, s (0..=[`MAX_DURATION_S`]). None (the
    /// default): a tripped segment stays locked out until an operator resets it.
    pub auto_reclose_s: Option<f64>,
}

/// One coil of a Modbus TCP device (`modbus = { addr = "host:port", unit = 1, coil = 0 }`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoilEndpoint {
    /// The I/O module's socket address.
    pub addr: SocketAddr,
    /// Its Modbus unit id (default [`DEFAULT_MODBUS_UNIT`]).
    pub unit: u8,
    /// The coil's protocol address (0-based, as on the wire; required: a wrong coil trips
    /// something else).
    pub coil: u16,
}

impl Trip {
    /// The automatic reclose delay, if any (None also for a value out of range, possible only
    /// for a topology that skipped validation: no reclose is the safe reading).
    pub fn auto_reclose(&self) -> Option<Duration> {
        self.auto_reclose_s
            .filter(|s| *s <= MAX_DURATION_S)
            .and_then(duration_s)
    }
}

/// A transformer's thermal model parameters (`[substations.segments.thermal]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thermal {
    /// The hot-spot time constant, s (> 0).
    pub time_constant_s: f64,
    /// The ambient temperature, °C.
    pub ambient_c: f64,
    /// The hot-spot rise above ambient at rated load in steady state, °C (> 0).
    pub rated_rise_c: f64,
    /// The hot-spot limit, °C (> `ambient_c`).
    pub limit_c: f64,
}

impl Default for Thermal {
    fn default() -> Self {
        Thermal {
            time_constant_s: DEFAULT_TIME_CONSTANT_S,
            ambient_c: DEFAULT_AMBIENT_C,
            rated_rise_c: DEFAULT_RATED_RISE_C,
            limit_c: DEFAULT_LIMIT_C,
        }
    }
}

/// A charger (EVSE).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charger {
    /// The charger's id.
    pub id: String,
    /// Its rating in both directions, kW (> 0, <= [`MAX_CHARGER_KW`]).
    pub max_kw: f64,
    /// Whether it can discharge a vehicle into the grid (default false).
    pub bidirectional: bool,
}

/// A grid-tied inverter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inverter {
    /// The inverter's id.
    pub id: String,
    /// Its rating, kW (> 0).
    pub max_kw: f64,
    /// Its SunSpec Modbus TCP endpoint; None: simulated in-process.
    pub modbus: Option<ModbusEndpoint>,
}

/// A meter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meter {
    /// The meter's id.
    pub id: String,
    /// Its SunSpec Modbus TCP endpoint; None: simulated in-process.
    pub modbus: Option<ModbusEndpoint>,
    /// The nominal line-to-neutral voltage its readings are divided by, V (default
    /// [`DEFAULT_NOMINAL_V`]).
    pub nominal_v: f64,
}

/// A vehicle's visit to a charger (`[[vehicles]]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vehicle {
    /// The vehicle's id.
    pub id: String,
    /// The id of the charger it is plugged into.
    pub charger: String,
    /// Its battery capacity, kWh (> 0, <= [`MAX_CAPACITY_KWH`]).
    pub capacity_kwh: f64,
    /// Its state of charge on arrival, % (0..=100).
    pub soc_pct: f64,
    /// The state of charge discharging must not go below, % (0..=100, default
    /// [`DEFAULT_MIN_SOC_PCT`]).
    pub min_soc_pct: f64,
    /// The state of charge it should leave with, % (`min_soc_pct`..=100, default
    /// [`DEFAULT_TARGET_SOC_PCT`]).
    pub target_soc_pct: f64,
    /// When it arrives, s since the run's start (>= 0, default 0).
    pub arrive_s: f64,
    /// When it leaves, s since the run's start (> `arrive_s`).
    pub depart_s: f64,
    /// The vehicle's own power limit in both directions, kW (> 0).
    pub max_kw: f64,
}

/// The safe-state ladder settings (`[safety]`), shared by every segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Safety {
    /// How long a cleared fault keeps its level, s (>= 0, default [`DEFAULT_HOLD_S`]).
    pub hold_s: f64,
    /// Keep-alive silence after which a segment goes ChargeOnly, s (> 0).
    pub keepalive_timeout_s: f64,
    /// PTP offset above which a segment goes ChargeOnly, ms (>= 0).
    pub ptp_charge_only_ms: f64,
    /// PTP offset above which a segment trips, ms (> `ptp_charge_only_ms`).
    pub ptp_trip_ms: f64,
    /// Inverter core temperature above which output is derated, °C.
    pub derate_start_c: f64,
    /// Temperature at which the derated cap reaches 0 kW, °C (> `derate_start_c`).
    pub derate_zero_c: f64,
    /// `[safety.clock]`: where the PTP readings come from (None: see [`Topology::clock`]).
    pub clock: Option<ClockConfig>,
    /// The grid's nominal frequency, `nominal_hz = 50 | 60`: it picks the default frequency
    /// bands. Required when a meter is read over Modbus; None: [`DEFAULT_NOMINAL_HZ`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nominal_hz: Option<GridFrequency>,
    /// Overrides of the trip bands (`[safety.bands]`), each with its clearing time.
    pub bands: BandOverrides,
    /// ROCOF above which the grid counts as lost (islanding), Hz/s (> 0).
    pub rocof_hz_per_s: f64,
    /// The window the ROCOF is measured over, ms.
    pub rocof_window_ms: u64,
    /// A segment whose last good grid reading is older than this is ChargeOnly
    /// (`meter_stale`), ms.
    pub max_reading_age_ms: u64,
    /// Failed temperature reads of an inverter in a row that count as over-temperature.
    pub temperature_read_failures: u32,
}

/// A frequency band written in the topology: `of1 = { hz = 51.5, clearing_ms = 2000 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FrequencyBand {
    /// The threshold, Hz.
    pub hz: f64,
    /// How long the frequency must stay beyond it, ms (> 0).
    pub clearing_ms: f64,
}

/// A voltage band written in the topology: `ov2 = { pu = 1.2, clearing_ms = 160 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VoltageBand {
    /// The threshold, per unit of the meters' `nominal_v`.
    pub pu: f64,
    /// How long the voltage must stay beyond it, ms (> 0).
    pub clearing_ms: f64,
}

/// `[safety.bands]`: every trip band can be replaced, each by its threshold and clearing
/// time; an absent one keeps its default (by `nominal_hz` for frequency). Stage 2 is the
/// fast stage further from nominal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BandOverrides {
    /// Over-frequency, stage 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of2: Option<FrequencyBand>,
    /// Over-frequency, stage 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of1: Option<FrequencyBand>,
    /// Under-frequency, stage 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uf1: Option<FrequencyBand>,
    /// Under-frequency, stage 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uf2: Option<FrequencyBand>,
    /// Over-voltage, stage 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ov2: Option<VoltageBand>,
    /// Over-voltage, stage 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ov1: Option<VoltageBand>,
    /// Under-voltage, stage 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uv1: Option<VoltageBand>,
    /// Under-voltage, stage 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uv2: Option<VoltageBand>,
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            hold_s: DEFAULT_HOLD_S,
            keepalive_timeout_s: DEFAULT_KEEPALIVE_TIMEOUT_S,
            ptp_charge_only_ms: DEFAULT_PTP_CHARGE_ONLY_MS,
            ptp_trip_ms: DEFAULT_PTP_TRIP_MS,
            derate_start_c: DEFAULT_DERATE_START_C,
            derate_zero_c: DEFAULT_DERATE_ZERO_C,
            clock: None,
            nominal_hz: None,
            bands: BandOverrides::default(),
            rocof_hz_per_s: DEFAULT_ROCOF_HZ_PER_S,
            rocof_window_ms: DEFAULT_ROCOF_WINDOW_MS,
            max_reading_age_ms: DEFAULT_MAX_READING_AGE_MS,
            temperature_read_failures: DEFAULT_TEMPERATURE_READ_FAILURES,
        }
    }
}

impl Safety {
    /// The ladder's configuration: [`LadderConfig::default`] with these settings. A setting
    /// that is out of range (possible only for a topology that skipped validation) keeps the
    /// ladder's default rather than panicking.
    pub fn ladder_config(&self) -> LadderConfig {
        let defaults = LadderConfig::for_grid(self.grid());
        let config = LadderConfig {
            hold_time: duration_s(self.hold_s).unwrap_or(defaults.hold_time),
            ptp_charge_only: duration_s(self.ptp_charge_only_ms / 1_000.0)
                .unwrap_or(defaults.ptp_charge_only),
            ptp_trip: duration_s(self.ptp_trip_ms / 1_000.0).unwrap_or(defaults.ptp_trip),
            keepalive_timeout: duration_s(self.keepalive_timeout_s)
                .unwrap_or(defaults.keepalive_timeout),
            derate_start_c: finite_or(self.derate_start_c, defaults.derate_start_c),
            derate_zero_c: finite_or(self.derate_zero_c, defaults.derate_zero_c),
            ..defaults
        };
        self.grid_settings(config)
    }

    /// The grid the site is on ([`DEFAULT_NOMINAL_HZ`] when not said).
    pub fn grid(&self) -> GridFrequency {
        self.nominal_hz.unwrap_or(DEFAULT_NOMINAL_HZ)
    }

    /// The frequency stages in force: the grid's defaults with the overrides.
    pub fn frequency_stages(&self) -> Stages {
        let b = &self.bands;
        let f = |o: Option<FrequencyBand>| o.map(|b| (b.hz, b.clearing_ms));
        overlay(
            self.grid().frequency_stages(),
            [f(b.of2), f(b.of1), f(b.uf1), f(b.uf2)],
        )
    }

    /// The voltage stages in force: the defaults with the overrides.
    pub fn voltage_stages(&self) -> Stages {
        let b = &self.bands;
        let v = |o: Option<VoltageBand>| o.map(|b| (b.pu, b.clearing_ms));
        overlay(
            crate::ladder::VOLTAGE_STAGES,
            [v(b.ov2), v(b.ov1), v(b.uv1), v(b.uv2)],
        )
    }

    /// The settings of this table's grid block (bands, ROCOF, reading age) on `config`.
    fn grid_settings(&self, config: LadderConfig) -> LadderConfig {
        LadderConfig {
            frequency_bands: self.frequency_stages().bands(),
            voltage_bands: self.voltage_stages().bands(),
            rocof_hz_per_s: finite_or(self.rocof_hz_per_s, config.rocof_hz_per_s),
            rocof_window: Duration::from_millis(self.rocof_window_ms),
            max_reading_age: Duration::from_millis(self.max_reading_age_ms),
            ..config
        }
    }
}

/// `stages` with each `Some((threshold, clearing_ms))` of `over` (over2, over1, under1,
/// under2) in place of its default; a clearing time that is not a duration keeps the
/// default's (possible only for a topology that skipped validation).
fn overlay(stages: Stages, over: [Option<(f64, f64)>; 4]) -> Stages {
    let put = |band: TripBand, o: Option<(f64, f64)>| match o {
        None => band,
        Some((threshold, ms)) => TripBand {
            threshold,
            clearing_time: duration_s(ms / 1_000.0).unwrap_or(band.clearing_time),
            ..band
        },
    };
    let [o2, o1, u1, u2] = over;
    Stages {
        over2: put(stages.over2, o2),
        over1: put(stages.over1, o1),
        under1: put(stages.under1, u1),
        under2: put(stages.under2, u2),
    }
}

fn duration_s(seconds: f64) -> Option<Duration> {
    if seconds.is_finite() && seconds >= 0.0 {
        Duration::try_from_secs_f64(seconds).ok()
    } else {
        None
    }
}

fn finite_or(value: f64, default: f64) -> f64 {
    if value.is_finite() {
        value
    } else {
        default
    }
}

impl Topology {
    /// Every segment with its substation, in file order.
    pub fn segments(&self) -> impl Iterator<Item = (&Substation, &Segment)> + '_ {
        self.substations
            .iter()
            .flat_map(|sub| sub.segments.iter().map(move |seg| (sub, seg)))
    }

    /// The segment with this id.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments().map(|(_, seg)| seg).find(|seg| seg.id == id)
    }

    /// Every charger with its segment, in file order.
    pub fn chargers(&self) -> impl Iterator<Item = (&Segment, &Charger)> + '_ {
        self.segments()
            .flat_map(|(_, seg)| seg.chargers.iter().map(move |c| (seg, c)))
    }

    /// The charger with this id.
    pub fn charger(&self, id: &str) -> Option<&Charger> {
        self.chargers().map(|(_, c)| c).find(|c| c.id == id)
    }

    /// The id of the segment a charger is on. A linear search: callers that need it for
    /// every charger should walk [`Topology::chargers`] once instead.
    pub fn charger_segment(&self, charger: &str) -> Option<&str> {
        self.chargers()
            .find(|(_, c)| c.id == charger)
            .map(|(seg, _)| seg.id.as_str())
    }

    /// The vehicle with this id.
    pub fn vehicle(&self, id: &str) -> Option<&Vehicle> {
        self.vehicles.iter().find(|v| v.id == id)
    }

    /// How many vehicle sessions the site has (one per `[[vehicles]]` entry).
    pub fn session_count(&self) -> usize {
        self.vehicles.len()
    }

    /// Check every rule of the module header. Errors name the field; they have line and
    /// column 0 and the file `<memory>`, as there is no text to point into.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let sources = Sources::default();
        let mut checker = Checker::new(&sources);
        checker.topology(self);
        let locator = Locator::new("<memory>", "");
        if checker.problems.is_empty() {
            Ok(())
        } else {
            Err(locator.errors(checker.problems))
        }
    }
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (as given to [`parse`] or [`load`]).
    pub file: String,
    /// 1-based line of the offending value or key; 0 when unknown.
    pub line: usize,
    /// 1-based column (in characters) of the offending value or key; 0 when unknown.
    pub column: usize,
    /// The dotted path of the field, e.g. `vehicles[3].charger`; empty for syntax errors and
    /// unreadable files.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration, in the order they appear in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The embedded demo site, parsed.
pub fn demo() -> Topology {
    // The demo text is compiled in and a unit test parses it, so this cannot fail at run time.
    parse(DEMO_FILE_NAME, DEMO).expect("the embedded configs/demo.toml is valid (tested)")
}

/// Read a topology from TOML text; `file_name` is only used in error messages.
pub fn parse(file_name: &str, text: &str) -> Result<Topology, ConfigErrors> {
    let locator = Locator::new(file_name, text);
    if text.len() > MAX_CONFIG_BYTES {
        return Err(locator.errors(vec![Problem {
            field: String::new(),
            offset: None,
            message: format!(
                "configuration is {} bytes, more than the limit of {MAX_CONFIG_BYTES}",
                text.len()
            ),
        }]));
    }
    let document = DeTable::parse(text).map_err(|e| {
        locator.errors(vec![Problem {
            field: String::new(),
            offset: e.span().map(|s| s.start),
            message: e.message().to_owned(),
        }])
    })?;
    let mut reader = Reader::default();
    let topology = reader.topology(&document);
    let mut checker = Checker::new(&reader.sources);
    checker.topology(&topology);
    let mut problems = reader.problems;
    problems.append(&mut checker.problems);
    if problems.is_empty() {
        Ok(topology)
    } else {
        Err(locator.errors(problems))
    }
}

/// Read a topology from a TOML file. A file that cannot be read (missing, not UTF-8, larger
/// than [`MAX_CONFIG_BYTES`]) is reported as a [`ConfigError`] too.
pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
    let file = path.display().to_string();
    let fail = |offset_text: Option<(&str, usize)>, message: String| {
        let (line, column) = match offset_text {
            Some((text, offset)) => Locator::new(&file, text).position(offset),
            None => (0, 0),
        };
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line,
            column,
            field: String::new(),
            message,
        }])
    };
    let handle = std::fs::File::open(path).map_err(|e| fail(None, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_CONFIG_BYTES).unwrap_or(u64::MAX);
    handle
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| fail(None, format!("cannot read: {e}")))?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(fail(
            None,
            format!("file is larger than the limit of {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            return Err(fail(
                Some((&prefix, valid)),
                "file is not valid UTF-8 here".to_owned(),
            ));
        }
    };
    let mut topology = parse(&file, &text)?;
    // `[ocpp] passwords` is relative to the topology file (it sits next to it), and so are
    // the authorization list's files.
    let auth = topology.authorization.as_mut();
    let auth_paths = auth
        .into_iter()
        .flat_map(|a| [Some(&mut a.store), a.seed.as_mut()]);
    let ocpp_paths = topology.ocpp.as_mut().and_then(|o| o.passwords.as_mut());
    let openadr_store = topology.openadr.as_mut().map(|o| &mut o.store);
    for p in auth_paths.flatten().chain(ocpp_paths).chain(openadr_store) {
        if p.is_relative() {
            *p = path.parent().unwrap_or(Path::new("")).join(&*p);
        }
    }
    Ok(topology)
}

/// A synthetic, valid site for benchmarks: one substation `sub-0` with `segments` segments
/// `tx-0..`, and `sessions` chargers `evse-{n}` with one vehicle `ev-{n}` each, spread over
/// the segments round-robin. Charger ratings (11 or 22 kW), vehicle limits, capacities
/// (40..100 kWh), states of charge (30..90 %) and departures (1..10 h) come from a
/// splitmix64 generator seeded with `seed`, so equal arguments give equal sites. Every
/// [`GENERATED_UNIDIRECTIONAL_EVERY`]-th charger cannot discharge. Each segment has one meter
/// and one [`GENERATED_INVERTER_KW`] inverter and is rated [`GENERATED_DIVERSITY`] times its
/// chargers' summed rating (at least [`GENERATED_MIN_RATED_KW`]). When `sessions > 0` at
/// least one segment is generated, since chargers need a segment.
pub fn generated(segments: usize, sessions: usize, seed: u64) -> Topology {
    let segment_count = if sessions > 0 {
        segments.max(1)
    } else {
        segments
    };
    let mut rng = SplitMix64(seed);
    let mut segs: Vec<Segment> = (0..segment_count)
        .map(|s| Segment {
            id: format!("tx-{s}"),
            rated_kw: GENERATED_MIN_RATED_KW,
            safe_default_kw: DEFAULT_SAFE_DEFAULT_KW,
            base_load_kw: DEFAULT_BASE_LOAD_KW,
            thermal: Thermal::default(),
            chargers: Vec::with_capacity(sessions / segment_count.max(1) + 1),
            inverters: vec![Inverter {
                id: format!("inv-{s}"),
                max_kw: GENERATED_INVERTER_KW,
                modbus: None,
            }],
            meters: vec![Meter {
                id: format!("meter-{s}"),
                modbus: None,
                nominal_v: DEFAULT_NOMINAL_V,
            }],
            trip: None,
        })
        .collect();
    let mut vehicles = Vec::with_capacity(sessions);
    let pick_kw = |rng: &mut SplitMix64| {
        let i = usize::try_from(rng.next_u64() % GENERATED_KW.len() as u64).unwrap_or(0);
        GENERATED_KW[i]
    };
    let draw = |rng: &mut SplitMix64, (lo, hi): (f64, f64)| lo + (hi - lo) * rng.unit();
    let every = GENERATED_UNIDIRECTIONAL_EVERY;
    for n in 0..sessions {
        let charger = Charger {
            id: format!("evse-{n}"),
            max_kw: pick_kw(&mut rng),
            bidirectional: n % every != every - 1,
        };
        vehicles.push(Vehicle {
            id: format!("ev-{n}"),
            charger: charger.id.clone(),
            capacity_kwh: round1(draw(&mut rng, GENERATED_CAPACITY_KWH)),
            soc_pct: round1(draw(&mut rng, GENERATED_SOC_PCT)),
            min_soc_pct: DEFAULT_MIN_SOC_PCT,
            target_soc_pct: DEFAULT_TARGET_SOC_PCT,
            arrive_s: 0.0,
            depart_s: draw(&mut rng, GENERATED_DEPART_S).round(),
            max_kw: pick_kw(&mut rng),
        });
        if let Some(seg) = segs.get_mut(n % segment_count.max(1)) {
            seg.chargers.push(charger);
        }
    }
    for seg in &mut segs {
        let total: f64 = seg.chargers.iter().map(|c| c.max_kw).sum();
        seg.rated_kw = (GENERATED_DIVERSITY * total).max(GENERATED_MIN_RATED_KW);
    }
    Topology {
        site: Site {
            id: "generated".to_owned(),
            cycle_ms: DEFAULT_CYCLE_MS,
            lease_s: DEFAULT_LEASE_S,
            keepalive_required: DEFAULT_KEEPALIVE_REQUIRED,
        },
        substations: vec![Substation {
            id: "sub-0".to_owned(),
            segments: segs,
        }],
        vehicles,
        safety: Safety {
            hold_s: GENERATED_HOLD_S,
            ..Safety::default()
        },
        ocpp: None,
        mqtt: None,
        metrics: Metrics::default(),
        api: Api::default(),
        authorization: None,
        openadr: None,
        grid_services: GridServices::for_grid(DEFAULT_NOMINAL_HZ),
    }
}

/// `[mqtt] topic_prefix` when none is given.
fn default_topic_prefix(site_id: &str) -> String {
    format!("gridvisor/{site_id}")
}

/// `[mqtt] client_id` when none is given.
fn default_client_id(site_id: &str) -> String {
    format!("gridvisor-{site_id}")
}

/// What is wrong with `name` as a TLS server name (a DNS name or an IP address), if anything.
fn server_name_problem(name: &str) -> Option<String> {
    const MAX_DNS_NAME_LEN: usize = 253;
    const MAX_LABEL_LEN: usize = 63;
    if name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Some(format!(
            "is {} bytes long, more than a DNS name's {MAX_DNS_NAME_LEN}",
            name.len()
        ));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let bad_label = name.split('.').find(|label| {
        label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    bad_label.map(|label| {
        format!(
            "{name:?} is neither an IP address nor a DNS name (label {label:?}: 1 to {MAX_LABEL_LEN} of A-Z, a-z, 0-9 and inner `-`)"
        )
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, good enough to vary benchmark sites.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        const MANTISSA: u32 = 53;
        (self.next_u64() >> (64 - MANTISSA)) as f64 / (1u64 << MANTISSA) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and positions.

/// A problem before it is given a line and column.
#[derive(Debug, Clone)]
struct Problem {
    field: String,
    /// Byte offset into the text, when there is one.
    offset: Option<usize>,
    message: String,
}

/// Turns byte offsets into 1-based lines and character columns.
struct Locator<'t> {
    file: &'t str,
    text: &'t str,
    line_starts: Vec<usize>,
}

impl<'t> Locator<'t> {
    fn new(file: &'t str, text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Locator {
            file,
            text,
            line_starts,
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), column + 1)
    }

    fn errors(&self, mut problems: Vec<Problem>) -> ConfigErrors {
        problems.sort_by_key(|p| p.offset);
        ConfigErrors(
            problems
                .into_iter()
                .map(|p| {
                    let (line, column) = p.offset.map_or((0, 0), |o| self.position(o));
                    ConfigError {
                        file: self.file.to_owned(),
                        line,
                        column,
                        field: p.field,
                        message: p.message,
                    }
                })
                .collect(),
        )
    }
}

/// Where each value was read from, by dotted path, and which paths failed to read.
#[derive(Debug, Default)]
struct Sources {
    at: HashMap<String, usize>,
    broken: HashSet<String>,
}

impl Sources {
    /// Whether the field was written in the file (not a default).
    fn explicit(&self, field: &str) -> bool {
        self.at.contains_key(field)
    }

    /// The offset of the field, or of its nearest written ancestor.
    fn locate(&self, field: &str) -> Option<usize> {
        let mut path = field;
        loop {
            if let Some(&offset) = self.at.get(path) {
                return Some(offset);
            }
            if path.is_empty() {
                return None;
            }
            path = parent(path);
        }
    }

    /// Whether the field or an ancestor failed to read (its value is a placeholder).
    fn is_broken(&self, field: &str) -> bool {
        let mut path = field;
        loop {
            if self.broken.contains(path) {
                return true;
            }
            if path.is_empty() {
                return false;
            }
            path = parent(path);
        }
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → ``.
fn parent(path: &str) -> &str {
    path.rfind(['.', '[']).map_or("", |i| &path[..i])
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

// ---------------------------------------------------------------------------------------------
// Pass 1: reading the spanned document.

type Node<'i> = Spanned<DeValue<'i>>;

const ROOT_KEYS: &[&str] = &[
    "site",
    "substations",
    "vehicles",
    "safety",
    "ocpp",
    "mqtt",
    "metrics",
    "api",
    "authorization",
    "openadr",
    "grid_services",
];
const AUTHORIZATION_KEYS: &[&str] = &["store", "seed", "unknown"];
const METRICS_KEYS: &[&str] = &["sessions"];
const API_KEYS: &[&str] = &["tls", "tokens", "actor_kill"];
const API_TLS_KEYS: &[&str] = &["cert", "key", "client_ca"];
const OCPP_KEYS: &[&str] = &[
    "listen",
    "password",
    "passwords",
    "allow_plaintext",
    "max_connections_per_ip",
    "max_handshakes_per_ip",
    "heartbeat_s",
    "tls",
];
const OCPP_TLS_KEYS: &[&str] = &["listen", "cert", "key", "client_ca", "crl"];
const MQTT_KEYS: &[&str] = &["broker", "topic_prefix", "interval_ms", "client_id", "tls"];
const MQTT_TLS_KEYS: &[&str] = &["ca", "cert", "key", "server_name"];
const MODBUS_KEYS: &[&str] = &["addr", "unit", "profile"];
const TRIP_KEYS: &[&str] = &["modbus", "auto_reclose_s"];
const COIL_KEYS: &[&str] = &["addr", "unit", "coil"];
const SITE_KEYS: &[&str] = &["id", "cycle_ms", "lease_s", "keepalive_required"];
const SUBSTATION_KEYS: &[&str] = &["id", "segments"];
const SEGMENT_KEYS: &[&str] = &[
    "id",
    "rated_kw",
    "safe_default_kw",
    "base_load_kw",
    "thermal",
    "chargers",
    "inverters",
    "meters",
    "trip",
];
const THERMAL_KEYS: &[&str] = &["time_constant_s", "ambient_c", "rated_rise_c", "limit_c"];
const CHARGER_KEYS: &[&str] = &["id", "max_kw", "bidirectional"];
const INVERTER_KEYS: &[&str] = &["id", "max_kw", "modbus"];
const METER_KEYS: &[&str] = &["id", "modbus", "nominal_v"];
const VEHICLE_KEYS: &[&str] = &[
    "id",
    "charger",
    "capacity_kwh",
    "soc_pct",
    "min_soc_pct",
    "target_soc_pct",
    "arrive_s",
    "depart_s",
    "max_kw",
];
const SAFETY_KEYS: &[&str] = &[
    "hold_s",
    "keepalive_timeout_s",
    "ptp_charge_only_ms",
    "ptp_trip_ms",
    "derate_start_c",
    "derate_zero_c",
    "clock",
    "nominal_hz",
    "bands",
    "rocof_hz_per_s",
    "rocof_window_ms",
    "max_reading_age_ms",
    "temperature_read_failures",
];
const BANDS_KEYS: &[&str] = &["of2", "of1", "uf1", "uf2", "ov2", "ov1", "uv1", "uv2"];
const FREQUENCY_BAND_KEYS: &[&str] = &["hz", "clearing_ms"];
const VOLTAGE_BAND_KEYS: &[&str] = &["pu", "clearing_ms"];

/// A table being read: its path, where it starts, and its entries (`None` when it is absent
/// or failed to read; then every key reads as its default or placeholder, silently).
struct Tbl<'a, 'i> {
    path: String,
    at: usize,
    table: Option<&'a DeTable<'i>>,
}

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    sources: Sources,
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl Reader {
    fn problem(&mut self, field: &str, offset: usize, message: String) {
        self.sources.broken.insert(field.to_owned());
        self.problems.push(Problem {
            field: field.to_owned(),
            offset: Some(offset),
            message,
        });
    }

    fn mismatch(&mut self, field: &str, node: &Node<'_>, expected: &str) {
        let message = format!("expected {expected}, found {}", kind(node.get_ref()));
        self.problem(field, node.span().start, message);
    }

    fn open_table<'a, 'i>(
        &mut self,
        path: String,
        at: usize,
        table: &'a DeTable<'i>,
        keys: &[&str],
    ) -> Tbl<'a, 'i> {
        self.sources.at.insert(path.clone(), at);
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if !keys.contains(&name) {
                let message = format!("unknown key `{name}`; expected one of: {}", keys.join(", "));
                self.problem(&join(&path, name), key.span().start, message);
            }
        }
        Tbl {
            path,
            at,
            table: Some(table),
        }
    }

    fn open<'a, 'i>(&mut self, path: String, node: &'a Node<'i>, keys: &[&str]) -> Tbl<'a, 'i> {
        let at = node.span().start;
        match node.get_ref() {
            DeValue::Table(table) => self.open_table(path, at, table, keys),
            _ => {
                self.mismatch(&path, node, "a table");
                Tbl {
                    path,
                    at,
                    table: None,
                }
            }
        }
    }

    /// The value of `key`, recording where it is.
    fn lookup<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> (String, Option<&'a Node<'i>>) {
        let path = join(&t.path, key);
        let node = t.table.and_then(|table| table.get(key));
        if let Some(node) = node {
            self.sources.at.insert(path.clone(), node.span().start);
        }
        (path, node)
    }

    fn missing(&mut self, t: &Tbl<'_, '_>, field: &str, what: &str) {
        if t.table.is_some() {
            self.problem(field, t.at, format!("missing required {what}"));
        } else {
            self.sources.broken.insert(field.to_owned());
        }
    }

    fn string(&mut self, t: &Tbl<'_, '_>, key: &str) -> String {
        match self.lookup(t, key) {
            (_, Some(node)) if matches!(node.get_ref(), DeValue::String(_)) => {
                node.get_ref().as_str().unwrap_or_default().to_owned()
            }
            (path, Some(node)) => {
                self.mismatch(&path, node, "a string");
                String::new()
            }
            (path, None) => {
                self.missing(t, &path, &format!("key `{key}`"));
                String::new()
            }
        }
    }

    /// A number (integer or float); `default` is used when the key is absent, and absence
    /// is an error when there is none.
    fn number(&mut self, t: &Tbl<'_, '_>, key: &str, default: Option<f64>) -> f64 {
        let (path, node) = self.lookup(t, key);
        let Some(node) = node else {
            return match default {
                Some(value) => value,
                None => {
                    self.missing(t, &path, &format!("key `{key}`"));
                    f64::NAN
                }
            };
        };
        let parsed = match node.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map(|v| v as f64)
                .map_err(|_| format!("integer {i} does not fit 64 bits")),
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .map_err(|_| format!("invalid float {f}")),
            _ => {
                self.mismatch(&path, node, "a number");
                return f64::NAN;
            }
        };
        parsed.unwrap_or_else(|message| {
            self.problem(&path, node.span().start, message);
            f64::NAN
        })
    }

    fn integer(&mut self, t: &Tbl<'_, '_>, key: &str, default: u64) -> u64 {
        match self.lookup(t, key) {
            (_, None) => default,
            (path, Some(node)) => match node.get_ref() {
                DeValue::Integer(i) => {
                    u64::from_str_radix(i.as_str(), i.radix()).unwrap_or_else(|_| {
                        let message = format!("expected a non-negative 64-bit integer, found {i}");
                        self.problem(&path, node.span().start, message);
                        default
                    })
                }
                _ => {
                    self.mismatch(&path, node, "an integer");
                    default
                }
            },
        }
    }

    fn boolean(&mut self, t: &Tbl<'_, '_>, key: &str, default: bool) -> bool {
        match self.lookup(t, key) {
            (_, None) => default,
            (path, Some(node)) => node.get_ref().as_bool().unwrap_or_else(|| {
                self.mismatch(&path, node, "a boolean (true or false)");
                default
            }),
        }
    }

    /// An optional sub-table.
    fn child<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str, keys: &[&str]) -> Tbl<'a, 'i> {
        match self.lookup(t, key) {
            (path, Some(node)) => self.open(path, node, keys),
            (path, None) => Tbl {
                path,
                at: t.at,
                table: None,
            },
        }
    }

    /// An optional array of tables; each element with its path.
    fn list<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> Vec<(String, &'a Node<'i>)> {
        match self.lookup(t, key) {
            (_, None) => Vec::new(),
            (path, Some(node)) => match node.get_ref() {
                DeValue::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| (format!("{path}[{i}]"), item))
                    .collect(),
                _ => {
                    self.mismatch(&path, node, "an array of tables");
                    Vec::new()
                }
            },
        }
    }

    fn topology(&mut self, document: &Spanned<DeTable<'_>>) -> Topology {
        let root = self.open_table(String::new(), 0, document.get_ref(), ROOT_KEYS);
        let site = match self.lookup(&root, "site") {
            (path, Some(node)) => self.open(path, node, SITE_KEYS),
            (path, None) => {
                self.missing(&root, &path, "table `[site]`");
                Tbl {
                    path,
                    at: 0,
                    table: None,
                }
            }
        };
        let site = Site {
            id: self.string(&site, "id"),
            cycle_ms: self.integer(&site, "cycle_ms", DEFAULT_CYCLE_MS),
            lease_s: self.number(&site, "lease_s", Some(DEFAULT_LEASE_S)),
            keepalive_required: self.boolean(
                &site,
                "keepalive_required",
                DEFAULT_KEEPALIVE_REQUIRED,
            ),
        };
        let substations = self
            .list(&root, "substations")
            .into_iter()
            .map(|(path, node)| self.substation(path, node))
            .collect();
        let vehicles = self
            .list(&root, "vehicles")
            .into_iter()
            .map(|(path, node)| self.vehicle(path, node))
            .collect();
        let safety = self.child(&root, "safety", SAFETY_KEYS);
        let safety = Safety {
            hold_s: self.number(&safety, "hold_s", Some(DEFAULT_HOLD_S)),
            keepalive_timeout_s: self.number(
                &safety,
                "keepalive_timeout_s",
                Some(DEFAULT_KEEPALIVE_TIMEOUT_S),
            ),
            ptp_charge_only_ms: self.number(
                &safety,
                "ptp_charge_only_ms",
                Some(DEFAULT_PTP_CHARGE_ONLY_MS),
            ),
            ptp_trip_ms: self.number(&safety, "ptp_trip_ms", Some(DEFAULT_PTP_TRIP_MS)),
            derate_start_c: self.number(&safety, "derate_start_c", Some(DEFAULT_DERATE_START_C)),
            derate_zero_c: self.number(&safety, "derate_zero_c", Some(DEFAULT_DERATE_ZERO_C)),
            clock: self.clock(&safety),
            nominal_hz: self.nominal_hz(&safety),
            bands: self.bands(&safety),
            rocof_hz_per_s: self.number(&safety, "rocof_hz_per_s", Some(DEFAULT_ROCOF_HZ_PER_S)),
            rocof_window_ms: self.integer(&safety, "rocof_window_ms", DEFAULT_ROCOF_WINDOW_MS),
            max_reading_age_ms: self.integer(
                &safety,
                "max_reading_age_ms",
                DEFAULT_MAX_READING_AGE_MS,
            ),
            temperature_read_failures: u32::try_from(self.integer(
                &safety,
                "temperature_read_failures",
                DEFAULT_TEMPERATURE_READ_FAILURES.into(),
            ))
            .unwrap_or(u32::MAX),
        };
        let ocpp = self.ocpp(&root);
        let mqtt = self.mqtt(&root, &site.id);
        let metrics = self.metrics(&root);
        let api = self.api(&root);
        let authorization = self.authorization(&root);
        let openadr = self.openadr(&root);
        let grid_services = self.grid_services(&root, safety.grid());
        Topology {
            site,
            substations,
            vehicles,
            safety,
            ocpp,
            mqtt,
            metrics,
            api,
            authorization,
            openadr,
            grid_services,
        }
    }

    /// The optional `[authorization]` table.
    fn authorization(&mut self, root: &Tbl<'_, '_>) -> Option<Authorization> {
        use crate::authorization::UnknownTokens;
        let t = self.child(root, "authorization", AUTHORIZATION_KEYS);
        t.table?;
        if self.lookup(root, "ocpp").1.is_none() {
            let message = "the authorization list needs [ocpp] (tokens come from charge points)";
            self.problem(&t.path, t.at, message.into());
        }
        let store = self
            .optional_string(&t, "store")
            .unwrap_or_else(|| DEFAULT_AUTHORIZATION_STORE.to_owned());
        let seed = self.optional_string(&t, "seed");
        let unknown = match self.optional_string(&t, "unknown").as_deref() {
            None | Some("refuse") => UnknownTokens::Refuse,
            Some("charge_only") => UnknownTokens::ChargeOnly,
            Some(other) => {
                if let (path, Some(node)) = self.lookup(&t, "unknown") {
                    let message = format!("{other:?} is not one of \"refuse\", \"charge_only\"");
                    self.problem(&path, node.span().start, message);
                }
                UnknownTokens::Refuse
            }
        };
        Some(Authorization {
            store: store.into(),
            seed: seed.map(Into::into),
            unknown,
        })
    }

    /// `[safety] nominal_hz`: absent, or 50 or 60.
    fn nominal_hz(&mut self, safety: &Tbl<'_, '_>) -> Option<GridFrequency> {
        let (path, node) = self.lookup(safety, "nominal_hz");
        let node = node?;
        let hz = self.number(safety, "nominal_hz", None);
        let grid = GridFrequency::from_hz(hz);
        if grid.is_none() && !self.sources.is_broken(&path) {
            let message = format!("must be 50 or 60 (Hz), got {hz}");
            self.problem(&path, node.span().start, message);
        }
        grid
    }

    /// `[safety.bands]`: each band given is whole (threshold and clearing time).
    fn bands(&mut self, safety: &Tbl<'_, '_>) -> BandOverrides {
        let t = self.child(safety, "bands", BANDS_KEYS);
        let f = |r: &mut Self, key: &str| {
            let (_, node) = r.lookup(&t, key);
            node?;
            let b = r.child(&t, key, FREQUENCY_BAND_KEYS);
            Some(FrequencyBand {
                hz: r.number(&b, "hz", None),
                clearing_ms: r.number(&b, "clearing_ms", None),
            })
        };
        let (of2, of1, uf1, uf2) = (
            f(self, "of2"),
            f(self, "of1"),
            f(self, "uf1"),
            f(self, "uf2"),
        );
        let v = |r: &mut Self, key: &str| {
            let (_, node) = r.lookup(&t, key);
            node?;
            let b = r.child(&t, key, VOLTAGE_BAND_KEYS);
            Some(VoltageBand {
                pu: r.number(&b, "pu", None),
                clearing_ms: r.number(&b, "clearing_ms", None),
            })
        };
        let (ov2, ov1, uv1, uv2) = (
            v(self, "ov2"),
            v(self, "ov1"),
            v(self, "uv1"),
            v(self, "uv2"),
        );
        BandOverrides {
            of2,
            of1,
            uf1,
            uf2,
            ov2,
            ov1,
            uv1,
            uv2,
        }
    }

    fn substation(&mut self, path: String, node: &Node<'_>) -> Substation {
        let t = self.open(path, node, SUBSTATION_KEYS);
        Substation {
            id: self.string(&t, "id"),
            segments: self
                .list(&t, "segments")
                .into_iter()
                .map(|(path, node)| self.segment(path, node))
                .collect(),
        }
    }

    fn segment(&mut self, path: String, node: &Node<'_>) -> Segment {
        let t = self.open(path, node, SEGMENT_KEYS);
        let id = self.string(&t, "id");
        let rated_kw = self.number(&t, "rated_kw", None);
        let safe_default_kw = self.number(&t, "safe_default_kw", Some(DEFAULT_SAFE_DEFAULT_KW));
        let base_load_kw = self.number(&t, "base_load_kw", Some(DEFAULT_BASE_LOAD_KW));
        let th = self.child(&t, "thermal", THERMAL_KEYS);
        let thermal = Thermal {
            time_constant_s: self.number(&th, "time_constant_s", Some(DEFAULT_TIME_CONSTANT_S)),
            ambient_c: self.number(&th, "ambient_c", Some(DEFAULT_AMBIENT_C)),
            rated_rise_c: self.number(&th, "rated_rise_c", Some(DEFAULT_RATED_RISE_C)),
            limit_c: self.number(&th, "limit_c", Some(DEFAULT_LIMIT_C)),
        };
        let chargers = self
            .list(&t, "chargers")
            .into_iter()
            .map(|(path, node)| {
                let c = self.open(path, node, CHARGER_KEYS);
                Charger {
                    id: self.string(&c, "id"),
                    max_kw: self.number(&c, "max_kw", None),
                    bidirectional: self.boolean(&c, "bidirectional", false),
                }
            })
            .collect();
        let inverters = self
            .list(&t, "inverters")
            .into_iter()
            .map(|(path, node)| {
                let i = self.open(path, node, INVERTER_KEYS);
                Inverter {
                    id: self.string(&i, "id"),
                    max_kw: self.number(&i, "max_kw", None),
                    modbus: self.modbus(&i),
                }
            })
            .collect();
        let meters = self
            .list(&t, "meters")
            .into_iter()
            .map(|(path, node)| {
                let m = self.open(path, node, METER_KEYS);
                Meter {
                    id: self.string(&m, "id"),
                    modbus: self.modbus(&m),
                    nominal_v: self.number(&m, "nominal_v", Some(DEFAULT_NOMINAL_V)),
                }
            })
            .collect();
        let trip = self.trip(&t);
        Segment {
            id,
            rated_kw,
            safe_default_kw,
            base_load_kw,
            thermal,
            chargers,
            inverters,
            meters,
            trip,
        }
    }

    /// An optional `trip = { modbus = { addr, unit, coil }, auto_reclose_s }`.
    fn trip(&mut self, t: &Tbl<'_, '_>) -> Option<Trip> {
        let trip = self.child(t, "trip", TRIP_KEYS);
        trip.table?;
        let modbus = self.coil(&trip);
        let auto_reclose_s = match self.lookup(&trip, "auto_reclose_s") {
            (_, None) => None,
            (_, Some(_)) => Some(self.number(&trip, "auto_reclose_s", None)),
        };
        Some(Trip {
            modbus,
            auto_reclose_s,
        })
    }

    /// An optional `modbus = { addr, unit, coil }` (the coil required).
    fn coil(&mut self, t: &Tbl<'_, '_>) -> Option<CoilEndpoint> {
        let m = self.child(t, "modbus", COIL_KEYS);
        m.table?;
        let addr = self.socket_addr(&m, "addr", None);
        let unit = self.unit(&m);
        let coil = match self.lookup(&m, "coil") {
            (path, None) => {
                self.missing(&m, &path, "key `coil` (the coil's 0-based address)");
                None
            }
            (path, Some(node)) => {
                let at = node.span().start;
                let reported = self.problems.len();
                let n = self.integer(&m, "coil", 0);
                match u16::try_from(n) {
                    // A value that did not read as an integer is reported already.
                    _ if self.problems.len() > reported => None,
                    Ok(c) => Some(c),
                    Err(_) => {
                        self.problem(&path, at, format!("coil {n} is outside 0..=65535"));
                        None
                    }
                }
            }
        };
        Some(CoilEndpoint {
            addr: addr?,
            unit,
            coil: coil?,
        })
    }

    /// A table's `unit` (default [`DEFAULT_MODBUS_UNIT`]), 0..=247.
    fn unit(&mut self, m: &Tbl<'_, '_>) -> u8 {
        let unit = self.integer(m, "unit", u64::from(DEFAULT_MODBUS_UNIT));
        match u8::try_from(unit) {
            Ok(u) if u <= 247 => u,
            _ => {
                let (path, node) = self.lookup(m, "unit");
                let at = node.map(|n| n.span().start).unwrap_or(m.at);
                self.problem(&path, at, format!("unit id {unit} is outside 0..=247"));
                DEFAULT_MODBUS_UNIT
            }
        }
    }

    /// A socket address written as a string (`"127.0.0.1:8080"`); `default` when absent.
    fn socket_addr(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        default: Option<&str>,
    ) -> Option<SocketAddr> {
        let (path, node) = self.lookup(t, key);
        let text = match node {
            None => match default {
                Some(d) => return d.parse().ok(),
                None => {
                    self.missing(t, &path, &format!("key `{key}`"));
                    return None;
                }
            },
            Some(node) => match node.get_ref().as_str() {
                Some(text) => (text, node.span().start),
                None => {
                    self.mismatch(&path, node, "a string \"host:port\"");
                    return None;
                }
            },
        };
        match text.0.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                let message = format!("{:?} is not an IP address and port ({e})", text.0);
                self.problem(&path, text.1, message);
                None
            }
        }
    }

    /// An optional `modbus = { addr, unit }`.
    fn modbus(&mut self, t: &Tbl<'_, '_>) -> Option<ModbusEndpoint> {
        let m = self.child(t, "modbus", MODBUS_KEYS);
        m.table?;
        let addr = self.socket_addr(&m, "addr", None);
        let unit = self.unit(&m);
        let profile = match self.lookup(&m, "profile") {
            (_, None) => None,
            (_, Some(_)) => Some(self.string(&m, "profile").into()),
        };
        Some(ModbusEndpoint {
            addr: addr?,
            unit,
            profile,
        })
    }

    /// The optional `[ocpp]` table.
    fn ocpp(&mut self, root: &Tbl<'_, '_>) -> Option<Ocpp> {
        let t = self.child(root, "ocpp", OCPP_KEYS);
        t.table?;
        let tls = self.child(&t, "tls", OCPP_TLS_KEYS);
        let tls = match tls.table {
            None => None,
            Some(_) => {
                let listen = self.socket_addr(&tls, "listen", Some(DEFAULT_OCPP_TLS_LISTEN));
                let cert = self.string(&tls, "cert");
                let key = self.string(&tls, "key");
                let client_ca = self.optional_string(&tls, "client_ca");
                let crl = self.optional_string(&tls, "crl");
                if let (None, (path, Some(node))) = (&client_ca, self.lookup(&tls, "crl")) {
                    let message = "`crl` revokes station certificates: it needs `client_ca` \
                                   (security profile 3)"
                        .to_owned();
                    self.problem(&path, node.span().start, message);
                }
                Some(OcppTls {
                    listen: listen?,
                    cert: cert.into(),
                    key: key.into(),
                    client_ca: client_ca.map(Into::into),
                    crl: crl.map(Into::into),
                })
            }
        };
        // A plaintext listener only by default when there is no TLS one.
        let listen_given = t.table.is_some_and(|table| table.get("listen").is_some());
        let listen = if listen_given || tls.is_none() {
            self.socket_addr(&t, "listen", Some(DEFAULT_OCPP_LISTEN))
        } else {
            None
        };
        if listen_given && listen.is_none() {
            return None; // reported
        }
        if let (path, Some(node)) = self.lookup(&t, "password") {
            let message = "the site-wide `password` is no longer accepted: give each station \
                           its own in a credentials file, `passwords = \"stations.cred\"` \
                           (add one with `gridvisor ocpp-password --file stations.cred \
                           --station ID`)"
                .to_owned();
            self.problem(&path, node.span().start, message);
        }
        let passwords = self.optional_string(&t, "passwords").map(Into::into);
        let allow_plaintext = self.boolean(&t, "allow_plaintext", false);
        self.ocpp_rules(
            &t,
            listen,
            tls.as_ref(),
            passwords.is_some(),
            allow_plaintext,
        );
        let heartbeat_s = self.integer(&t, "heartbeat_s", DEFAULT_OCPP_HEARTBEAT_S);
        let per_ip = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let max_connections_per_ip = self.integer(
            &t,
            "max_connections_per_ip",
            per_ip(DEFAULT_MAX_CONNECTIONS_PER_IP),
        );
        let max_handshakes_per_ip = self.integer(
            &t,
            "max_handshakes_per_ip",
            per_ip(DEFAULT_MAX_HANDSHAKES_PER_IP),
        );
        Some(Ocpp {
            listen,
            passwords,
            credentials: None,
            allow_plaintext,
            max_connections_per_ip,
            max_handshakes_per_ip,
            heartbeat_s,
            tls,
        })
    }

    /// `[ocpp]`'s security rules: a password file wherever Basic auth is used (ws, profile 2
    /// wss), and no plaintext ws off loopback unless `allow_plaintext`.
    fn ocpp_rules(
        &mut self,
        t: &Tbl<'_, '_>,
        listen: Option<SocketAddr>,
        tls: Option<&OcppTls>,
        has_passwords: bool,
        allow_plaintext: bool,
    ) {
        let basic_auth = listen.is_some() || tls.is_some_and(|tls| tls.client_ca.is_none());
        if basic_auth && !has_passwords {
            let message = "missing required key `passwords`: ws and wss with passwords \
                           (security profiles 1 and 2) check each station against a \
                           credentials file (`gridvisor ocpp-password --file FILE --station ID`)"
                .to_owned();
            self.problem(&join(&t.path, "passwords"), t.at, message);
        }
        if let Some(addr) = listen.filter(|a| !a.ip().is_loopback() && !allow_plaintext) {
            let (path, node) = self.lookup(t, "listen");
            let at = node.map_or(t.at, |n| n.span().start);
            let message = format!(
                "plaintext ws on {addr}, off loopback: passwords and setpoints would cross the \
                 network in clear; use [ocpp.tls], a loopback address, or set \
                 allow_plaintext = true"
            );
            self.problem(&path, at, message);
        }
    }

    /// An optional string key.
    fn optional_string(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<String> {
        match self.lookup(t, key) {
            (_, None) => None,
            (_, Some(_)) => Some(self.string(t, key)),
        }
    }

    /// The optional `[api]` table: a credential (`tokens`, `tls.client_ca`) needs TLS, and TLS
    /// needs a credential.
    fn api(&mut self, root: &Tbl<'_, '_>) -> Api {
        let t = self.child(root, "api", API_KEYS);
        if t.table.is_none() {
            return Api::default();
        }
        let tokens = self.optional_string(&t, "tokens").map(Into::into);
        let actor_kill = self.boolean(&t, "actor_kill", false);
        let tls_table = self.child(&t, "tls", API_TLS_KEYS);
        let tls = tls_table.table.map(|_| ApiTls {
            cert: self.string(&tls_table, "cert").into(),
            key: self.string(&tls_table, "key").into(),
            client_ca: self
                .optional_string(&tls_table, "client_ca")
                .map(Into::into),
        });
        match (&tls, &tokens) {
            (None, Some(_)) => {
                if let (path, Some(node)) = self.lookup(&t, "tokens") {
                    let message = "bearer tokens need TLS: add [api.tls] with `cert` and `key`";
                    self.problem(&path, node.span().start, message.into());
                }
            }
            (Some(tls), None) if tls.client_ca.is_none() => {
                let message = "TLS without a credential: add `tokens` to [api] or `client_ca` \
                    to [api.tls]";
                self.problem(&tls_table.path, tls_table.at, message.into());
            }
            _ => {}
        }
        Api {
            tls,
            tokens,
            actor_kill,
        }
    }

    /// The optional `[metrics]` table.
    fn metrics(&mut self, root: &Tbl<'_, '_>) -> Metrics {
        let t = self.child(root, "metrics", METRICS_KEYS);
        if t.table.is_none() {
            return Metrics::default();
        }
        let sessions = match self.lookup(&t, "sessions") {
            (_, None) => Granularity::default(),
            (path, Some(node)) => match node.get_ref().as_str() {
                Some("aggregated") => Granularity::Aggregated,
                Some("per_actor") => Granularity::PerActor,
                Some(other) => {
                    let message =
                        format!("expected \"aggregated\" or \"per_actor\", found {other:?}");
                    self.problem(&path, node.span().start, message);
                    Granularity::default()
                }
                None => {
                    self.mismatch(&path, node, "\"aggregated\" or \"per_actor\"");
                    Granularity::default()
                }
            },
        };
        Metrics { sessions }
    }

    /// The optional `[mqtt]` table; `site_id` makes the defaults of the topic prefix and the
    /// client id.
    fn mqtt(&mut self, root: &Tbl<'_, '_>, site_id: &str) -> Option<Mqtt> {
        let t = self.child(root, "mqtt", MQTT_KEYS);
        t.table?;
        let broker = self.socket_addr(&t, "broker", Some(DEFAULT_MQTT_BROKER));
        let topic_prefix = self
            .optional_string(&t, "topic_prefix")
            .unwrap_or_else(|| default_topic_prefix(site_id));
        let interval_ms = self.integer(&t, "interval_ms", DEFAULT_MQTT_INTERVAL_MS);
        let client_id = self
            .optional_string(&t, "client_id")
            .unwrap_or_else(|| default_client_id(site_id));
        let tls = self.child(&t, "tls", MQTT_TLS_KEYS);
        let tls = match tls.table {
            None => None,
            Some(_) => {
                let ca = self.string(&tls, "ca");
                let cert = self.optional_string(&tls, "cert");
                let key = self.optional_string(&tls, "key");
                // A client certificate needs its key and a key its certificate.
                for (given, other, absent) in [
                    ("cert", "key", key.is_none()),
                    ("key", "cert", cert.is_none()),
                ] {
                    if let (path, Some(node)) = self.lookup(&tls, given) {
                        if absent {
                            let message = format!(
                                "`{given}` needs `{other}` (client authentication takes both)"
                            );
                            self.problem(&path, node.span().start, message);
                        }
                    }
                }
                let server_name = self.optional_string(&tls, "server_name");
                let server_name = match (server_name, broker) {
                    (Some(name), _) => name,
                    (None, Some(b)) => b.ip().to_string(),
                    (None, None) => String::new(), // the broker was reported
                };
                Some(MqttTls {
                    ca: ca.into(),
                    cert: cert.map(Into::into),
                    key: key.map(Into::into),
                    server_name,
                })
            }
        };
        Some(Mqtt {
            broker: broker?,
            topic_prefix,
            interval_ms,
            client_id,
            tls,
        })
    }

    fn vehicle(&mut self, path: String, node: &Node<'_>) -> Vehicle {
        let t = self.open(path, node, VEHICLE_KEYS);
        Vehicle {
            id: self.string(&t, "id"),
            charger: self.string(&t, "charger"),
            capacity_kwh: self.number(&t, "capacity_kwh", None),
            soc_pct: self.number(&t, "soc_pct", None),
            min_soc_pct: self.number(&t, "min_soc_pct", Some(DEFAULT_MIN_SOC_PCT)),
            target_soc_pct: self.number(&t, "target_soc_pct", Some(DEFAULT_TARGET_SOC_PCT)),
            arrive_s: self.number(&t, "arrive_s", Some(0.0)),
            depart_s: self.number(&t, "depart_s", None),
            max_kw: self.number(&t, "max_kw", None),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pass 2: validation.

/// A lower bound.
#[derive(Clone, Copy)]
enum Lo {
    Any,
    AtLeast(f64),
    Above(f64),
}

/// An upper bound.
#[derive(Clone, Copy)]
enum Hi {
    Any,
    AtMost(f64),
}

/// Ids seen so far of one kind: id → where it was first defined.
struct Registry<'t> {
    kind: &'static str,
    first: HashMap<&'t str, String>,
    /// Some id of this kind failed to read, so a reference to an unknown id may be to it.
    incomplete: bool,
}

impl<'t> Registry<'t> {
    fn new(kind: &'static str) -> Self {
        Registry {
            kind,
            first: HashMap::new(),
            incomplete: false,
        }
    }
}

struct Checker<'s> {
    sources: &'s Sources,
    problems: Vec<Problem>,
}

impl<'s> Checker<'s> {
    fn new(sources: &'s Sources) -> Self {
        Checker {
            sources,
            problems: Vec::new(),
        }
    }

    /// Report a problem with `field`, unless it or a field the check depends on failed to
    /// read (that was reported already).
    fn report(&mut self, field: &str, depends_on: &[&str], message: String) {
        if self.sources.is_broken(field) || depends_on.iter().any(|d| self.sources.is_broken(d)) {
            return;
        }
        self.problems.push(Problem {
            field: field.to_owned(),
            offset: self.sources.locate(field),
            message,
        });
    }

    /// Check a number is finite and within its bounds; true when it is.
    fn number(&mut self, field: &str, value: f64, lo: Lo, hi: Hi) -> bool {
        if !value.is_finite() {
            self.report(field, &[], format!("must be a finite number, got {value}"));
            return false;
        }
        let above = match lo {
            Lo::Any => true,
            Lo::AtLeast(min) => value >= min,
            Lo::Above(min) => value > min,
        };
        let below = match hi {
            Hi::Any => true,
            Hi::AtMost(max) => value <= max,
        };
        if above && below {
            return true;
        }
        let bound = match (lo, hi) {
            (Lo::AtLeast(a), Hi::AtMost(b)) => format!("between {a} and {b}"),
            (Lo::Above(a), Hi::AtMost(b)) => format!("> {a} and <= {b}"),
            (Lo::AtLeast(a), Hi::Any) => format!(">= {a}"),
            (Lo::Above(a), Hi::Any) => format!("> {a}"),
            (Lo::Any, Hi::AtMost(b)) => format!("<= {b}"),
            (Lo::Any, Hi::Any) => "finite".to_owned(),
        };
        self.report(field, &[], format!("must be {bound}, got {value}"));
        false
    }

    /// `high` must be above `low` (`strict`) or not below it. The error goes to `high` when
    /// it was written down, else to `low` (a default is wrong only because of the other).
    fn ordered(&mut self, low: (&str, f64), high: (&str, f64), strict: bool) {
        let ((low_field, lo), (high_field, hi)) = (low, high);
        let fine = if strict { hi > lo } else { hi >= lo };
        if fine {
            return;
        }
        let name = |field: &str| field.rsplit('.').next().unwrap_or(field).to_owned();
        if self.sources.explicit(high_field) || !self.sources.explicit(low_field) {
            let op = if strict { ">" } else { ">=" };
            let message = format!("must be {op} {} ({lo}), got {hi}", name(low_field));
            self.report(high_field, &[low_field], message);
        } else {
            let op = if strict { "<" } else { "<=" };
            let message = format!(
                "must be {op} {} ({hi}, the default), got {lo}",
                name(high_field)
            );
            self.report(low_field, &[high_field], message);
        }
    }

    /// Check an id's form; true when it is well formed.
    fn id(&mut self, field: &str, id: &str) -> bool {
        let message = if id.is_empty() {
            "must not be empty".to_owned()
        } else if id.len() > MAX_ID_LEN {
            format!("is {} bytes long, more than {MAX_ID_LEN}", id.len())
        } else if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            format!("{id:?} contains {bad:?}; ids may only use A-Z, a-z, 0-9, `_`, `.` and `-`")
        } else {
            return true;
        };
        self.report(field, &[], message);
        false
    }

    /// Check an id's form and that it is the first of its kind.
    fn unique<'t>(&mut self, registry: &mut Registry<'t>, owner: &str, id: &'t str) {
        let field = format!("{owner}.id");
        if self.sources.is_broken(&field) {
            registry.incomplete = true;
            return;
        }
        if !self.id(&field, id) {
            return;
        }
        match registry.first.get(id) {
            Some(first) => {
                let message = format!(
                    "duplicate {} id {id:?}; first defined at {first}",
                    registry.kind
                );
                self.report(&field, &[], message);
            }
            None => {
                registry.first.insert(id, owner.to_owned());
            }
        }
    }

    fn topology(&mut self, t: &Topology) {
        self.site(&t.site);
        if let Some(o) = &t.ocpp {
            if o.heartbeat_s == 0 || o.heartbeat_s > MAX_OCPP_HEARTBEAT_S {
                self.report(
                    "ocpp.heartbeat_s",
                    &[],
                    format!(
                        "must be 1..={MAX_OCPP_HEARTBEAT_S} s, got {}",
                        o.heartbeat_s
                    ),
                );
            }
        }
        if let Some(m) = &t.mqtt {
            self.mqtt(&t.site, m);
        }
        self.safety(&t.safety);
        self.grid_services(&t.grid_services);
        let mut substations = Registry::new("substation");
        let mut segments = Registry::new("segment");
        let mut chargers = Registry::new("charger");
        let mut inverters = Registry::new("inverter");
        let mut meters = Registry::new("meter");
        for (si, sub) in t.substations.iter().enumerate() {
            let sub_path = format!("substations[{si}]");
            self.unique(&mut substations, &sub_path, &sub.id);
            for (gi, seg) in sub.segments.iter().enumerate() {
                let path = format!("{sub_path}.segments[{gi}]");
                self.unique(&mut segments, &path, &seg.id);
                self.segment(&path, seg);
                for (i, c) in seg.chargers.iter().enumerate() {
                    let p = format!("{path}.chargers[{i}]");
                    self.unique(&mut chargers, &p, &c.id);
                    let max = Hi::AtMost(MAX_CHARGER_KW);
                    self.number(&format!("{p}.max_kw"), c.max_kw, Lo::Above(0.0), max);
                }
                for (i, inv) in seg.inverters.iter().enumerate() {
                    let p = format!("{path}.inverters[{i}]");
                    self.unique(&mut inverters, &p, &inv.id);
                    self.number(&format!("{p}.max_kw"), inv.max_kw, Lo::Above(0.0), Hi::Any);
                }
                for (i, m) in seg.meters.iter().enumerate() {
                    let p = format!("{path}.meters[{i}]");
                    self.unique(&mut meters, &p, &m.id);
                    self.number(
                        &format!("{p}.nominal_v"),
                        m.nominal_v,
                        Lo::Above(0.0),
                        Hi::AtMost(1_000_000.0),
                    );
                }
            }
        }
        let mut vehicles = Registry::new("vehicle");
        for (i, v) in t.vehicles.iter().enumerate() {
            let path = format!("vehicles[{i}]");
            self.unique(&mut vehicles, &path, &v.id);
            self.vehicle(&path, v, &chargers);
        }
        self.overlaps(&t.vehicles, &chargers);
        self.nominal_required(t);
    }

    fn site(&mut self, site: &Site) {
        self.id("site.id", &site.id);
        if !(MIN_CYCLE_MS..=MAX_CYCLE_MS).contains(&site.cycle_ms) {
            let message = format!(
                "must be between {MIN_CYCLE_MS} and {MAX_CYCLE_MS} ms, got {}",
                site.cycle_ms
            );
            self.report("site.cycle_ms", &[], message);
        }
        let max = Hi::AtMost(MAX_DURATION_S);
        self.number("site.lease_s", site.lease_s, Lo::Above(0.0), max);
    }

    /// `[mqtt]`: the period's range, the topic prefix and client id as MQTT takes them, the
    /// TLS server name. A prefix or client id derived from the site id is only checked through
    /// the site id (one mistake, one error).
    fn mqtt(&mut self, site: &Site, m: &Mqtt) {
        if !(MIN_MQTT_INTERVAL_MS..=MAX_MQTT_INTERVAL_MS).contains(&m.interval_ms) {
            let message = format!(
                "must be between {MIN_MQTT_INTERVAL_MS} and {MAX_MQTT_INTERVAL_MS} ms, got {}",
                m.interval_ms
            );
            self.report("mqtt.interval_ms", &[], message);
        }
        let sources = self.sources;
        let derived = |field: &str, value: &str, default: String| {
            !sources.explicit(field) && value == default
        };
        if !derived(
            "mqtt.topic_prefix",
            &m.topic_prefix,
            default_topic_prefix(&site.id),
        ) {
            let p = &m.topic_prefix;
            let message = if p.is_empty() {
                Some("must not be empty".to_owned())
            } else if p.len() > MAX_MQTT_TOPIC_PREFIX_LEN {
                Some(format!(
                    "is {} bytes long, more than {MAX_MQTT_TOPIC_PREFIX_LEN}",
                    p.len()
                ))
            } else if let Some(w) = p.chars().find(|c| matches!(c, '+' | '#')) {
                Some(format!(
                    "{p:?} contains the wildcard {w:?}; a topic to publish to has none"
                ))
            } else if let Some(c) = p.chars().find(|c| c.is_control()) {
                Some(format!("{p:?} contains the control character {c:?}"))
            } else if p.starts_with('$') {
                Some(format!(
                    "{p:?} starts with `$`, which brokers keep for their own topics"
                ))
            } else if p.ends_with('/') {
                Some(format!(
                    "{p:?} ends with `/` (the topics would have an empty level)"
                ))
            } else {
                None
            };
            if let Some(message) = message {
                self.report("mqtt.topic_prefix", &[], message);
            }
        }
        if !derived("mqtt.client_id", &m.client_id, default_client_id(&site.id)) {
            let id = &m.client_id;
            let message = if id.is_empty() {
                Some("must not be empty".to_owned())
            } else if id.len() > MAX_MQTT_CLIENT_ID_LEN {
                Some(format!(
                    "is {} bytes long, more than {MAX_MQTT_CLIENT_ID_LEN}",
                    id.len()
                ))
            } else {
                id.chars()
                    .find(|c| c.is_control())
                    .map(|c| format!("{id:?} contains the control character {c:?}"))
            };
            if let Some(message) = message {
                self.report("mqtt.client_id", &[], message);
            }
        }
        if let Some(tls) = &m.tls {
            if m.broker.is_ipv6() {
                let message = "TLS to a broker at an IPv6 address is not supported (rumqttc \
                               takes the address as the TLS name); use an IPv4 address"
                    .to_owned();
                self.report("mqtt.broker", &[], message);
            }
            if let Some(message) = server_name_problem(&tls.server_name) {
                self.report("mqtt.tls.server_name", &["mqtt.broker"], message);
            }
        }
    }

    fn safety(&mut self, s: &Safety) {
        let max_s = Hi::AtMost(MAX_DURATION_S);
        let max_ms = Hi::AtMost(MAX_DURATION_S * 1_000.0);
        self.number("safety.hold_s", s.hold_s, Lo::AtLeast(0.0), max_s);
        let timeout = s.keepalive_timeout_s;
        self.number("safety.keepalive_timeout_s", timeout, Lo::Above(0.0), max_s);
        let (co, tr) = ("safety.ptp_charge_only_ms", "safety.ptp_trip_ms");
        let co_ok = self.number(co, s.ptp_charge_only_ms, Lo::AtLeast(0.0), max_ms);
        let tr_ok = self.number(tr, s.ptp_trip_ms, Lo::Above(0.0), max_ms);
        if co_ok && tr_ok {
            self.ordered((co, s.ptp_charge_only_ms), (tr, s.ptp_trip_ms), true);
        }
        let (start, zero) = ("safety.derate_start_c", "safety.derate_zero_c");
        let start_ok = self.number(start, s.derate_start_c, Lo::Any, Hi::Any);
        let zero_ok = self.number(zero, s.derate_zero_c, Lo::Any, Hi::Any);
        if start_ok && zero_ok {
            self.ordered((start, s.derate_start_c), (zero, s.derate_zero_c), true);
        }
        if let Some(c) = &s.clock {
            self.clock(c);
        }
        self.grid_safety(s);
    }

    /// The grid block of `[safety]`: ROCOF, reading age, temperature read failures, and
    /// the bands in force (overrides on the defaults), each a number, ordered from stage 2
    /// under to stage 2 over around nominal, each stage 2 clearing no later than its stage 1.
    fn grid_safety(&mut self, s: &Safety) {
        let rocof = Hi::AtMost(MAX_ROCOF_HZ_PER_S);
        self.number(
            "safety.rocof_hz_per_s",
            s.rocof_hz_per_s,
            Lo::Above(0.0),
            rocof,
        );
        self.range_ms("safety.rocof_window_ms", s.rocof_window_ms, ROCOF_WINDOW_MS);
        let age = s.max_reading_age_ms;
        self.range_ms("safety.max_reading_age_ms", age, MAX_READING_AGE_MS);
        let n = s.temperature_read_failures;
        if !(1..=MAX_TEMPERATURE_READ_FAILURES).contains(&n) {
            let message = format!("must be between 1 and {MAX_TEMPERATURE_READ_FAILURES}, got {n}");
            self.report("safety.temperature_read_failures", &[], message);
        }
        let b = &s.bands;
        let f = |o: Option<FrequencyBand>| o.map(|b| (b.hz, b.clearing_ms));
        let v = |o: Option<VoltageBand>| o.map(|b| (b.pu, b.clearing_ms));
        let freq = [f(b.of2), f(b.of1), f(b.uf1), f(b.uf2)];
        let volt = [v(b.ov2), v(b.ov1), v(b.uv1), v(b.uv2)];
        let nominal = ("safety.nominal_hz", s.grid().hz());
        self.stages(
            ["of2", "of1", "uf1", "uf2"],
            "hz",
            freq,
            s.frequency_stages(),
            nominal,
        );
        let one_pu = ("1 pu (nominal)", 1.0);
        self.stages(
            ["ov2", "ov1", "uv1", "uv2"],
            "pu",
            volt,
            s.voltage_stages(),
            one_pu,
        );
    }

    fn range_ms(&mut self, field: &str, ms: u64, (lo, hi): (u64, u64)) {
        if !(lo..=hi).contains(&ms) {
            self.report(
                field,
                &[],
                format!("must be between {lo} and {hi} ms, got {ms}"),
            );
        }
    }

    /// One quantity's four stages: `names` and `written` in the order over2, over1, under1,
    /// under2; `stages` the ones in force.
    fn stages(
        &mut self,
        names: [&str; 4],
        unit: &str,
        written: [Option<(f64, f64)>; 4],
        stages: Stages,
        nominal: (&str, f64),
    ) {
        let field = |i: usize, key: &str| format!("safety.bands.{}.{key}", names[i]);
        let mut ok = true;
        for (i, w) in written.iter().enumerate() {
            if let Some((threshold, ms)) = *w {
                ok &= self.number(&field(i, unit), threshold, Lo::Above(0.0), Hi::Any);
                let max_ms = Hi::AtMost(MAX_DURATION_S * 1_000.0);
                ok &= self.number(&field(i, "clearing_ms"), ms, Lo::Above(0.0), max_ms);
            }
        }
        if !ok {
            return;
        }
        let band = [stages.over2, stages.over1, stages.under1, stages.under2];
        // From the bottom up: uf2 < uf1 < nominal < of1 < of2.
        let chain = [
            (field(3, unit), names[3].to_owned(), band[3].threshold),
            (field(2, unit), names[2].to_owned(), band[2].threshold),
            (nominal.0.to_owned(), nominal.0.to_owned(), nominal.1),
            (field(1, unit), names[1].to_owned(), band[1].threshold),
            (field(0, unit), names[0].to_owned(), band[0].threshold),
        ];
        for pair in chain.windows(2) {
            let ((lo_field, lo_name, lo), (hi_field, hi_name, hi)) = (&pair[0], &pair[1]);
            if hi > lo {
                continue;
            }
            let message = format!("unordered: {hi_name} ({hi}) must be above {lo_name} ({lo})");
            // At the band rather than at the nominal frequency, which only picks defaults.
            let (first, second) = if hi_field == nominal.0 {
                (lo_field, hi_field)
            } else {
                (hi_field, lo_field)
            };
            self.report_written(first, second, message);
        }
        for (fast, slow) in [(0, 1), (3, 2)] {
            let (f, sl) = (band[fast].clearing_time, band[slow].clearing_time);
            if f > sl {
                let message = format!(
                    "unordered: {} clears after {} ({} ms > {} ms); stage 2 must be the faster",
                    names[fast],
                    names[slow],
                    f.as_millis(),
                    sl.as_millis()
                );
                let (ff, sf) = (field(fast, "clearing_ms"), field(slow, "clearing_ms"));
                self.report_written(&ff, &sf, message);
            }
        }
    }

    /// Report at `first` when it was written down, else at `second` (a default is wrong
    /// only because of what was written).
    fn report_written(&mut self, first: &str, second: &str, message: String) {
        let at = if self.sources.explicit(first) || !self.sources.explicit(second) {
            first
        } else {
            second
        };
        self.report(at, &[], message);
    }

    /// `[safety] nominal_hz` is required once a meter is real (read over Modbus): the
    /// default bands of the wrong grid would trip a healthy one or miss an island.
    fn nominal_required(&mut self, t: &Topology) {
        if t.safety.nominal_hz.is_some() || self.sources.is_broken("safety.nominal_hz") {
            return;
        }
        let real = t.segments().flat_map(|(_, seg)| {
            let id = seg.id.clone();
            seg.meters
                .iter()
                .filter(|m| m.modbus.is_some())
                .map(move |m| (id.clone(), m.id.clone()))
        });
        let Some((segment, meter)) = real.into_iter().next() else {
            return;
        };
        let path = self.meter_path(t, &meter).map(|p| format!("{p}.modbus"));
        let offset = self
            .sources
            .locate("safety")
            .filter(|_| self.sources.explicit("safety"))
            .or_else(|| path.as_deref().and_then(|p| self.sources.locate(p)));
        self.problems.push(Problem {
            field: "safety.nominal_hz".to_owned(),
            offset,
            message: format!(
                "required (50 or 60) when meters are read over Modbus: meter {meter:?} of segment {segment:?} has `modbus`"
            ),
        });
    }

    fn meter_path(&self, t: &Topology, meter: &str) -> Option<String> {
        for (si, sub) in t.substations.iter().enumerate() {
            for (gi, seg) in sub.segments.iter().enumerate() {
                if let Some(mi) = seg.meters.iter().position(|m| m.id == meter) {
                    return Some(format!("substations[{si}].segments[{gi}].meters[{mi}]"));
                }
            }
        }
        None
    }

    fn segment(&mut self, path: &str, seg: &Segment) {
        let rated = format!("{path}.rated_kw");
        let rated_ok = self.number(&rated, seg.rated_kw, Lo::Above(0.0), Hi::Any);
        let safe = format!("{path}.safe_default_kw");
        let safe_ok = self.number(&safe, seg.safe_default_kw, Lo::AtLeast(0.0), Hi::Any);
        if rated_ok && safe_ok && seg.safe_default_kw > seg.rated_kw {
            let message = format!(
                "must be <= rated_kw ({}), got {}",
                seg.rated_kw, seg.safe_default_kw
            );
            self.report(&safe, &[&rated], message);
        }
        let base = format!("{path}.base_load_kw");
        self.number(&base, seg.base_load_kw, Lo::AtLeast(0.0), Hi::Any);
        let th = &seg.thermal;
        let max_s = Hi::AtMost(MAX_DURATION_S);
        let tau = format!("{path}.thermal.time_constant_s");
        self.number(&tau, th.time_constant_s, Lo::Above(0.0), max_s);
        let rise = format!("{path}.thermal.rated_rise_c");
        self.number(&rise, th.rated_rise_c, Lo::Above(0.0), Hi::Any);
        let ambient = format!("{path}.thermal.ambient_c");
        let limit = format!("{path}.thermal.limit_c");
        let ambient_ok = self.number(&ambient, th.ambient_c, Lo::Any, Hi::Any);
        let limit_ok = self.number(&limit, th.limit_c, Lo::Any, Hi::Any);
        if ambient_ok && limit_ok {
            self.ordered((&ambient, th.ambient_c), (&limit, th.limit_c), true);
        }
        if seg.meters.is_empty() {
            let message = "every segment needs at least one meter".to_owned();
            self.report(&format!("{path}.meters"), &[], message);
        }
        if let Some(reclose) = seg.trip.as_ref().and_then(|t| t.auto_reclose_s) {
            let field = format!("{path}.trip.auto_reclose_s");
            self.number(&field, reclose, Lo::AtLeast(0.0), max_s);
        }
    }

    fn vehicle(&mut self, path: &str, v: &Vehicle, chargers: &Registry<'_>) {
        let charger = format!("{path}.charger");
        if v.charger.is_empty() {
            self.report(&charger, &[], "must name a charger".to_owned());
        } else if !chargers.incomplete && !chargers.first.contains_key(v.charger.as_str()) {
            let message = format!("no charger has the id {:?}", v.charger);
            self.report(&charger, &[], message);
        }
        let f = |key: &str| format!("{path}.{key}");
        let soc = (Lo::AtLeast(0.0), Hi::AtMost(MAX_SOC_PCT));
        self.number(
            &f("capacity_kwh"),
            v.capacity_kwh,
            Lo::Above(0.0),
            Hi::AtMost(MAX_CAPACITY_KWH),
        );
        self.number(&f("soc_pct"), v.soc_pct, soc.0, soc.1);
        let min_ok = self.number(&f("min_soc_pct"), v.min_soc_pct, soc.0, soc.1);
        let target_ok = self.number(&f("target_soc_pct"), v.target_soc_pct, soc.0, soc.1);
        if min_ok && target_ok {
            let (min, target) = (f("min_soc_pct"), f("target_soc_pct"));
            self.ordered((&min, v.min_soc_pct), (&target, v.target_soc_pct), false);
        }
        let time = (Lo::AtLeast(0.0), Hi::AtMost(MAX_SESSION_TIME_S));
        let arrive_ok = self.number(&f("arrive_s"), v.arrive_s, time.0, time.1);
        let depart_ok = self.number(&f("depart_s"), v.depart_s, time.0, time.1);
        if arrive_ok && depart_ok {
            let (arrive, depart) = (f("arrive_s"), f("depart_s"));
            self.ordered((&arrive, v.arrive_s), (&depart, v.depart_s), true);
        }
        self.number(&f("max_kw"), v.max_kw, Lo::Above(0.0), Hi::Any);
    }

    /// Two vehicles on one charger must not be there at the same time.
    fn overlaps(&mut self, vehicles: &[Vehicle], chargers: &Registry<'_>) {
        let mut by_charger: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, v) in vehicles.iter().enumerate() {
            let times_ok =
                v.arrive_s.is_finite() && v.depart_s.is_finite() && v.depart_s > v.arrive_s;
            if times_ok && chargers.first.contains_key(v.charger.as_str()) {
                by_charger.entry(v.charger.as_str()).or_default().push(i);
            }
        }
        let mut groups: Vec<Vec<usize>> =
            by_charger.into_values().filter(|g| g.len() > 1).collect();
        groups.sort_unstable();
        for mut group in groups {
            group.sort_by(|&a, &b| {
                vehicles[a]
                    .arrive_s
                    .total_cmp(&vehicles[b].arrive_s)
                    .then(a.cmp(&b))
            });
            // The vehicle staying longest among those that arrived earlier.
            let mut latest: Option<usize> = None;
            for &i in &group {
                let v = &vehicles[i];
                if let Some(j) = latest {
                    let w = &vehicles[j];
                    if v.arrive_s < w.depart_s {
                        let message = format!(
                            "charger {:?} is taken by vehicle {:?} (vehicles[{j}]) from {} s to \
                             {} s; this vehicle is there from {} s to {} s",
                            v.charger, w.id, w.arrive_s, w.depart_s, v.arrive_s, v.depart_s
                        );
                        let deps = [
                            format!("vehicles[{i}].arrive_s"),
                            format!("vehicles[{i}].depart_s"),
                            format!("vehicles[{j}].arrive_s"),
                            format!("vehicles[{j}].depart_s"),
                        ];
                        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                        self.report(&format!("vehicles[{i}].charger"), &deps, message);
                    }
                }
                if latest.is_none_or(|j| v.depart_s > vehicles[j].depart_s) {
                    latest = Some(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small valid site; tests break it with [`with`].
    const MINIMAL: &str = r#"[site]
id = "s"

[[substations]]
id = "sub"

[[substations.segments]]
id = "tx"
rated_kw = 100

[[substations.segments.chargers]]
id = "c1"
max_kw = 11

[[substations.segments.meters]]
id = "m1"

[[vehicles]]
id = "v1"
charger = "c1"
capacity_kwh = 50
soc_pct = 40
depart_s = 3600
max_kw = 11
"#;

    /// MINIMAL with each `from` replaced (once) by `to`.
    fn with(edits: &[(&str, &str)]) -> String {
        let mut text = MINIMAL.to_owned();
        for (from, to) in edits {
            assert!(text.contains(from), "{from:?} not in the text");
            text = text.replacen(from, to, 1);
        }
        text
    }

    /// The 1-based line holding `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the text"))
            + 1
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse("t.toml", text) {
            Ok(_) => panic!("expected errors in:\n{text}"),
            Err(ConfigErrors(errors)) => errors,
        }
    }

    /// Exactly one error, on `field`, at the line holding `marker`, whose message contains
    /// `message`.
    fn one_error(text: &str, field: &str, marker: &str, message: &str) -> ConfigError {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        let e = errs.into_iter().next().expect("one");
        assert_eq!(e.field, field, "{e}");
        assert_eq!(e.line, line_of(text, marker), "{e}");
        assert!(e.message.contains(message), "{e}");
        assert_eq!(e.file, "t.toml");
        e
    }

    #[test]
    fn minimal_parses_with_defaults() {
        let t = parse("t.toml", MINIMAL).expect("valid");
        assert_eq!(
            t.site,
            Site {
                id: "s".into(),
                cycle_ms: 1_000,
                lease_s: 30.0,
                keepalive_required: true
            }
        );
        assert_eq!(t.safety, Safety::default());
        let seg = t.segment("tx").expect("tx");
        assert_eq!((seg.safe_default_kw, seg.base_load_kw), (0.0, 0.0));
        assert_eq!(seg.thermal, Thermal::default());
        assert!(!seg.chargers[0].bidirectional);
        let v = t.vehicle("v1").expect("v1");
        assert_eq!(
            (v.min_soc_pct, v.target_soc_pct, v.arrive_s),
            (20.0, 80.0, 0.0)
        );
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn the_demo_parses() {
        let t = demo();
        assert_eq!(t.site.id, "demo-site");
        assert_eq!((t.site.cycle_ms, t.site.lease_s), (1_000, 30.0));
        assert_eq!(t.safety.hold_s, 10.0);
        assert_eq!(t.safety.ladder_config().hold_time, Duration::from_secs(10));
        let ids: Vec<&str> = t.segments().map(|(_, s)| s.id.as_str()).collect();
        assert_eq!(ids, ["tx-1", "tx-2", "tx-3"]);
        for (sub, seg) in t.segments() {
            assert_eq!(sub.id, "sub-1");
            assert!((4..=6).contains(&seg.chargers.len()), "{}", seg.id);
            assert_eq!((seg.inverters.len(), seg.meters.len()), (1, 1));
        }
        let tx3 = t.segment("tx-3").expect("tx-3");
        assert!(tx3.thermal.time_constant_s < Thermal::default().time_constant_s);
        assert_eq!(t.charger_segment("evse-10"), Some("tx-3"));
        assert_eq!(t.charger_segment("nope"), None);
        assert!(t.session_count() >= 12);
        for v in &t.vehicles {
            assert!((25.0..=90.0).contains(&v.soc_pct), "{}", v.id);
            assert!(v.depart_s - v.arrive_s <= 8.0 * 3_600.0, "{}", v.id);
        }
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn ocpp_and_modbus_endpoints_parse() {
        let meter = with(&[(
            "id = \"m1\"\n",
            "id = \"m1\"\nmodbus = { addr = \"127.0.0.1:1502\", unit = 3 }\nnominal_v = 120\n",
        )]);
        // Last, so that the table does not swallow the keys of the arrays before it.
        let text = format!(
            "{meter}\n[safety]\nnominal_hz = 60\n[ocpp]\nlisten = \"127.0.0.1:9000\"\npasswords = \"s.cred\"\n"
        );
        let t = parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let m = &t.segment("tx").expect("tx").meters[0];
        assert_eq!(
            m.modbus,
            Some(ModbusEndpoint {
                addr: "127.0.0.1:1502".parse().unwrap(),
                unit: 3,
                profile: None,
            })
        );
        assert_eq!(m.nominal_v, 120.0);
        let o = t.ocpp.expect("[ocpp]");
        assert_eq!(o.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(o.tls, None);
        assert_eq!(o.passwords, Some("s.cred".into()));
        assert!(!o.allow_plaintext);
        assert_eq!(
            o.max_handshakes_per_ip,
            DEFAULT_MAX_HANDSHAKES_PER_IP as u64
        );
        assert_eq!(o.heartbeat_s, DEFAULT_OCPP_HEARTBEAT_S);
        let bare = parse("t.toml", MINIMAL).expect("valid");
        assert_eq!(bare.ocpp, None);
        assert_eq!(bare.segment("tx").unwrap().meters[0].modbus, None);
    }

    #[test]
    fn an_ocpp_tls_listener_replaces_the_plaintext_default() {
        let text = format!(
            "{MINIMAL}\n[ocpp]\npasswords = \"s.cred\"\n[ocpp.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n"
        );
        let o = parse("t.toml", &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .ocpp
            .unwrap();
        assert_eq!(o.listen, None, "no ws listener unless asked for");
        let tls = o.tls.unwrap();
        assert_eq!(tls.listen, DEFAULT_OCPP_TLS_LISTEN.parse().unwrap());
        assert_eq!(tls.client_ca, Some("ca.pem".into()));
        let both = text.replace(
            "passwords = \"s.cred\"",
            "passwords = \"s.cred\"\nlisten = \"127.0.0.1:8080\"",
        );
        let o = parse("t.toml", &both)
            .unwrap_or_else(|e| panic!("{e}"))
            .ocpp
            .unwrap();
        assert_eq!(o.listen, Some("127.0.0.1:8080".parse().unwrap()));
        let no_key = text.replace("key = \"k.pem\"\n", "");
        one_error(
            &no_key,
            "ocpp.tls.key",
            "[ocpp.tls]",
            "missing required key `key`",
        );
        let plain = format!("{MINIMAL}\n[ocpp]\npasswords = \"s.cred\"\nallow_plaintext = true\n");
        let o = parse("t.toml", &plain).unwrap().ocpp.unwrap();
        assert_eq!(o.listen, Some(DEFAULT_OCPP_LISTEN.parse().unwrap()));
    }

    #[test]
    fn ocpp_security_rules_are_named() {
        let old = format!(
            "{MINIMAL}\n[ocpp]\nlisten = \"127.0.0.1:1\"\npassword = \"pw\"\npasswords = \"s\"\n"
        );
        one_error(
            &old,
            "ocpp.password",
            "password = ",
            "passwords = \"stations.cred\"",
        );
        let none = format!("{MINIMAL}\n[ocpp]\nlisten = \"127.0.0.1:1\"\n");
        one_error(
            &none,
            "ocpp.passwords",
            "[ocpp]",
            "missing required key `passwords`",
        );
        let profile2 = format!("{MINIMAL}\n[ocpp]\n[ocpp.tls]\ncert = \"c\"\nkey = \"k\"\n");
        one_error(
            &profile2,
            "ocpp.passwords",
            "[ocpp]",
            "security profiles 1 and 2",
        );
        let open = format!("{MINIMAL}\n[ocpp]\nlisten = \"0.0.0.0:8080\"\npasswords = \"s\"\n");
        one_error(&open, "ocpp.listen", "listen = ", "allow_plaintext = true");
        let default_listen = format!("{MINIMAL}\n[ocpp]\npasswords = \"s\"\n");
        one_error(&default_listen, "ocpp.listen", "[ocpp]", "off loopback");
        let crl_alone = format!(
            "{MINIMAL}\n[ocpp]\npasswords = \"s\"\n[ocpp.tls]\ncert = \"c\"\nkey = \"k\"\ncrl = \"r.crl\"\n"
        );
        one_error(&crl_alone, "ocpp.tls.crl", "crl = ", "needs `client_ca`");
        // Profile 3 alone needs no password file; its CRL is kept.
        let mtls = format!(
            "{MINIMAL}\n[ocpp]\n[ocpp.tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\ncrl = \"r.crl\"\n"
        );
        let o = parse("t.toml", &mtls)
            .unwrap_or_else(|e| panic!("{e}"))
            .ocpp
            .unwrap();
        assert_eq!(o.tls.unwrap().crl, Some("r.crl".into()));
        assert_eq!(o.passwords, None);
    }

    #[test]
    fn the_password_file_is_relative_to_the_topology() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        let text = format!("{MINIMAL}\n[ocpp]\nlisten = \"127.0.0.1:1\"\npasswords = \"s.cred\"\n");
        std::fs::write(&path, text).unwrap();
        let o = load(&path).unwrap_or_else(|e| panic!("{e}")).ocpp.unwrap();
        assert_eq!(o.passwords, Some(dir.path().join("s.cred")));
    }

    #[test]
    fn bad_endpoints_are_named() {
        let text = with(&[(
            "id = \"m1\"\n",
            "id = \"m1\"\nmodbus = { addr = \"meter.local\" }\n",
        )]);
        one_error(
            &text,
            "substations[0].segments[0].meters[0].modbus.addr",
            "meter.local",
            "not an IP address and port",
        );
        let text = with(&[(
            "id = \"m1\"\n",
            "id = \"m1\"\nmodbus = { addr = \"127.0.0.1:502\", unit = 300 }\n",
        )]);
        let text = format!("{text}\n[safety]\nnominal_hz = 60\n");
        one_error(
            &text,
            "substations[0].segments[0].meters[0].modbus.unit",
            "unit = 300",
            "outside 0..=247",
        );
        let text = format!(
            "{MINIMAL}\n[ocpp]\nlisten = \"127.0.0.1:8080\"\npasswords = \"s\"\nheartbeat_s = 0\n"
        );
        one_error(&text, "ocpp.heartbeat_s", "heartbeat_s = 0", "must be 1..=");
        let text = format!("{MINIMAL}\n[ocpp]\nlisten = 8080\n");
        one_error(&text, "ocpp.listen", "listen = 8080", "host:port");
    }

    #[test]
    fn a_trip_output_parses_and_its_mistakes_are_named() {
        let seg_line = "rated_kw = 100\n";
        let trip = |t: &str| with(&[(seg_line, &format!("rated_kw = 100\ntrip = {t}\n"))]);
        let text = trip("{ modbus = { addr = \"127.0.0.1:1502\", unit = 3, coil = 7 } }");
        let t = parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let tr = t
            .segment("tx")
            .unwrap()
            .trip
            .clone()
            .expect("a trip output");
        assert_eq!(
            tr.modbus,
            Some(CoilEndpoint {
                addr: "127.0.0.1:1502".parse().unwrap(),
                unit: 3,
                coil: 7
            })
        );
        assert_eq!(tr.auto_reclose(), None, "no reclose unless configured");
        assert_eq!(
            parse("t.toml", MINIMAL)
                .unwrap()
                .segment("tx")
                .unwrap()
                .trip,
            None
        );
        let sim = parse("t.toml", &trip("{ auto_reclose_s = 2.5 }")).unwrap();
        let tr = sim.segment("tx").unwrap().trip.clone().unwrap();
        assert_eq!(
            (&tr.modbus, tr.auto_reclose()),
            (&None, Some(Duration::from_millis(2500)))
        );
        let field = "substations[0].segments[0].trip";
        one_error(
            &trip("{ modbus = { addr = \"127.0.0.1:1502\" } }"),
            &format!("{field}.modbus.coil"),
            "modbus = {",
            "missing required key `coil`",
        );
        one_error(
            &trip("{ modbus = { addr = \"127.0.0.1:1502\", coil = 70000 } }"),
            &format!("{field}.modbus.coil"),
            "coil = 70000",
            "outside 0..=65535",
        );
        one_error(
            &trip("{ modbus = { addr = \"127.0.0.1:1502\", coil = \"x\" } }"),
            &format!("{field}.modbus.coil"),
            "coil = \"x\"",
            "expected an integer",
        );
        one_error(
            &trip("{ modbus = { addr = \"relay\", coil = 1 } }"),
            &format!("{field}.modbus.addr"),
            "addr = \"relay\"",
            "not an IP address and port",
        );
        one_error(
            &trip("{ auto_reclose_s = -1 }"),
            &format!("{field}.auto_reclose_s"),
            "auto_reclose_s = -1",
            "must be",
        );
        one_error(
            &trip("{ reclose = true }"),
            &format!("{field}.reclose"),
            "reclose = true",
            "unknown key `reclose`",
        );
    }

    #[test]
    fn the_api_table_parses_and_pairs_credentials_with_tls() {
        assert_eq!(parse("t.toml", MINIMAL).expect("valid").api, Api::default());
        let text = format!(
            "{MINIMAL}\n[api]\ntokens = \"t.txt\"\nactor_kill = true\n\
             [api.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n"
        );
        let api = parse("t.toml", &text).expect("valid").api;
        assert_eq!(
            (api.tokens, api.actor_kill, api.tls.map(|t| t.client_ca)),
            (Some("t.txt".into()), true, Some(Some("ca.pem".into())))
        );
        let no_tls = format!("{MINIMAL}\n[api]\ntokens = \"t.txt\"\n");
        one_error(&no_tls, "api.tokens", "tokens =", "bearer tokens need TLS");
        let no_credential = format!("{MINIMAL}\n[api.tls]\ncert = \"c\"\nkey = \"k\"\n");
        one_error(
            &no_credential,
            "api.tls",
            "[api.tls]",
            "TLS without a credential",
        );
        let typo = format!("{MINIMAL}\n[api]\nactor_kil = true\n");
        one_error(&typo, "api.actor_kil", "actor_kil", "unknown");
        let bad = format!("{MINIMAL}\n[api]\nactor_kill = \"yes\"\n");
        one_error(&bad, "api.actor_kill", "actor_kill", "a boolean");
    }

    #[test]
    fn mqtt_export_parses_with_defaults() {
        assert_eq!(parse("t.toml", MINIMAL).expect("valid").mqtt, None);
        let text = format!("{MINIMAL}\n[mqtt]\n");
        let m = parse("t.toml", &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .mqtt
            .expect("[mqtt]");
        assert_eq!(
            m,
            Mqtt {
                broker: DEFAULT_MQTT_BROKER.parse().unwrap(),
                topic_prefix: "gridvisor/s".into(),
                interval_ms: DEFAULT_MQTT_INTERVAL_MS,
                client_id: "gridvisor-s".into(),
                tls: None,
            }
        );
        let text = format!(
            "{MINIMAL}\n[mqtt]\nbroker = \"127.0.0.1:8883\"\ntopic_prefix = \"plant/north\"\n\
             interval_ms = 250\nclient_id = \"gv-1\"\n[mqtt.tls]\nca = \"ca.pem\"\n\
             cert = \"c.pem\"\nkey = \"k.pem\"\nserver_name = \"broker.example\"\n"
        );
        let t = parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let m = t.mqtt.clone().expect("[mqtt]");
        assert_eq!(m.broker, "127.0.0.1:8883".parse().unwrap());
        assert_eq!(
            (m.topic_prefix.as_str(), m.interval_ms),
            ("plant/north", 250)
        );
        assert_eq!(m.client_id, "gv-1");
        assert_eq!(
            m.tls,
            Some(MqttTls {
                ca: "ca.pem".into(),
                cert: Some("c.pem".into()),
                key: Some("k.pem".into()),
                server_name: "broker.example".into(),
            })
        );
        let back = toml::to_string(&t).expect("serializes");
        assert_eq!(parse("round-trip.toml", &back), Ok(t));
        // Without a server name the broker's certificate must name its IP address.
        let text =
            format!("{MINIMAL}\n[mqtt]\nbroker = \"10.0.0.5:8883\"\n[mqtt.tls]\nca = \"ca.pem\"\n");
        let tls = parse("t.toml", &text).unwrap().mqtt.unwrap().tls.unwrap();
        assert_eq!(tls.server_name, "10.0.0.5");
        assert_eq!((tls.cert, tls.key), (None, None));
    }

    #[test]
    fn the_authorization_list_parses_and_its_errors_are_named() {
        use crate::authorization::UnknownTokens;
        assert_eq!(parse("t.toml", MINIMAL).expect("valid").authorization, None);
        let ocpp = "[ocpp]\nlisten = \"127.0.0.1:9000\"\npasswords = \"s.cred\"\n";
        let text = format!("{MINIMAL}\n{ocpp}[authorization]\n");
        let a = parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let a = a.authorization.expect("[authorization]");
        assert_eq!(
            a.store,
            std::path::PathBuf::from(DEFAULT_AUTHORIZATION_STORE)
        );
        assert_eq!((a.seed, a.unknown), (None, UnknownTokens::Refuse));
        let text = format!(
            "{MINIMAL}\n{ocpp}[authorization]\nstore = \"/var/lib/t.redb\"\n\
             seed = \"tokens.toml\"\nunknown = \"charge_only\"\n"
        );
        let t = parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let a = t.authorization.clone().expect("[authorization]");
        assert_eq!(a.unknown, UnknownTokens::ChargeOnly);
        assert_eq!(a.seed, Some("tokens.toml".into()));
        let back = toml::to_string(&t).expect("serializes");
        assert_eq!(parse("round-trip.toml", &back), Ok(t));
        let text = format!("{MINIMAL}\n{ocpp}[authorization]\nunknown = \"welcome\"\n");
        one_error(&text, "authorization.unknown", "welcome", "not one of");
        let text = format!("{MINIMAL}\n{ocpp}[authorization]\nseeds = \"x\"\n");
        one_error(&text, "authorization.seeds", "seeds", "unknown key");
        let text = format!("{MINIMAL}\n[authorization]\n");
        one_error(&text, "authorization", "[authorization]", "needs [ocpp]");
    }

    #[test]
    fn bad_mqtt_settings_are_named() {
        let mqtt = |body: &str| format!("{MINIMAL}\n[mqtt]\n{body}\n");
        let text = mqtt("interval_ms = 50");
        one_error(
            &text,
            "mqtt.interval_ms",
            "interval_ms = 50",
            "between 100 and",
        );
        let text = mqtt("interval_ms = 3600001");
        one_error(&text, "mqtt.interval_ms", "interval_ms", "between 100 and");
        let text = mqtt("broker = \"localhost:1883\"");
        one_error(
            &text,
            "mqtt.broker",
            "localhost",
            "not an IP address and port",
        );
        let text = mqtt("broker = \"[::1]:8883\"\n[mqtt.tls]\nca = \"ca.pem\"");
        one_error(&text, "mqtt.broker", "broker = ", "IPv6");
        let text = mqtt("port = 1883");
        one_error(&text, "mqtt.port", "port = 1883", "unknown key `port`");
        for (prefix, message) in [
            ("a/+/b", "wildcard '+'"),
            ("a/#", "wildcard '#'"),
            ("", "must not be empty"),
            ("$SYS/x", "starts with `$`"),
            ("a/", "ends with `/`"),
            ("a\\u0000b", "control character"),
        ] {
            let text = mqtt(&format!("topic_prefix = \"{prefix}\""));
            one_error(&text, "mqtt.topic_prefix", "topic_prefix", message);
        }
        let long = "x".repeat(MAX_MQTT_TOPIC_PREFIX_LEN + 1);
        let text = mqtt(&format!("topic_prefix = \"{long}\""));
        one_error(&text, "mqtt.topic_prefix", "topic_prefix", "more than 256");
        let text = mqtt("client_id = \"\"");
        one_error(&text, "mqtt.client_id", "client_id", "must not be empty");
        let text = mqtt("topic_prefix = 7");
        one_error(
            &text,
            "mqtt.topic_prefix",
            "topic_prefix = 7",
            "expected a string",
        );
        let text = mqtt("[mqtt.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"");
        one_error(
            &text,
            "mqtt.tls.ca",
            "[mqtt.tls]",
            "missing required key `ca`",
        );
        let text = mqtt("[mqtt.tls]\nca = \"ca.pem\"\ncert = \"c.pem\"");
        one_error(&text, "mqtt.tls.cert", "cert = ", "`cert` needs `key`");
        let text = mqtt("[mqtt.tls]\nca = \"ca.pem\"\nkey = \"k.pem\"");
        one_error(&text, "mqtt.tls.key", "key = ", "`key` needs `cert`");
        let text = mqtt("[mqtt.tls]\nca = \"ca.pem\"\nserver_name = \"bad name\"");
        one_error(
            &text,
            "mqtt.tls.server_name",
            "server_name",
            "neither an IP address",
        );
        // A default made from a bad site id: one error, on the site id.
        let text = format!("{}\n[mqtt]\n", with(&[("id = \"s\"", "id = \"s+1\"")]));
        one_error(&text, "site.id", "s+1", "contains '+'");
    }

    #[test]
    fn serialized_topologies_read_back_equal() {
        for t in [demo(), generated(3, 10, 7)] {
            let text = toml::to_string(&t).expect("serializes");
            assert_eq!(parse("round-trip.toml", &text), Ok(t));
        }
    }

    #[test]
    fn error_display_is_file_line_column_field_message() {
        let text = with(&[("max_kw = 11\n\n[[sub", "max_kw = 1500\n\n[[sub")]);
        let e = one_error(
            &text,
            "substations[0].segments[0].chargers[0].max_kw",
            "max_kw = 1500",
            "must be > 0 and <= 1000, got 1500",
        );
        assert_eq!(e.column, 10, "points at the value");
        assert_eq!(
            e.to_string(),
            format!(
                "t.toml:{}:10: substations[0].segments[0].chargers[0].max_kw: must be > 0 and \
                 <= 1000, got 1500",
                e.line
            )
        );
    }

    #[test]
    fn syntax_error_reports_line_and_column() {
        let text = with(&[("id = \"sub\"", "id = \"sub")]);
        let errs = errors(&text);
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!((e.line, e.column), (line_of(&text, "id = \"sub"), 10));
        assert_eq!(e.field, "");
        assert!(e.message.contains("string"), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("t.toml:{}:10: ", e.line)),
            "{e}"
        );
        let dup = with(&[("rated_kw = 100", "rated_kw = 100\nrated_kw = 90")]);
        let errs = errors(&dup);
        assert_eq!(errs[0].line, line_of(&dup, "rated_kw = 90"));
        assert!(errs[0].message.contains("duplicate key"), "{}", errs[0]);
    }

    #[test]
    fn unknown_keys_are_reported_where_the_key_is() {
        let text = with(&[("max_kw = 11\n\n[[sub", "max_kw = 11\nmax_kv = 3\n\n[[sub")]);
        let e = one_error(
            &text,
            "substations[0].segments[0].chargers[0].max_kv",
            "max_kv",
            "unknown key `max_kv`; expected one of: id, max_kw, bidirectional",
        );
        assert_eq!(e.column, 1);
        let top = format!("[sites]\nid = 1\n{MINIMAL}");
        let errs = errors(&top);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_eq!((errs[0].field.as_str(), errs[0].line), ("sites", 1));
    }

    #[test]
    fn wrong_types_and_missing_keys() {
        let text = with(&[("rated_kw = 100", "rated_kw = \"100\"")]);
        one_error(
            &text,
            "substations[0].segments[0].rated_kw",
            "rated_kw",
            "expected a number, found a string",
        );
        let text = with(&[("capacity_kwh = 50\n", "")]);
        one_error(
            &text,
            "vehicles[0].capacity_kwh",
            "[[vehicles]]",
            "missing required key `capacity_kwh`",
        );
        let text = with(&[("[site]\nid = \"s\"\n", "")]);
        let e = one_error(&text, "site", "", "missing required table `[site]`");
        assert_eq!(e.line, 1);
        let text = with(&[("[site]\n", "[site]\ncycle_ms = 2.5\n")]);
        one_error(
            &text,
            "site.cycle_ms",
            "cycle_ms",
            "expected an integer, found a float",
        );
        let text = with(&[("[site]\n", "[site]\ncycle_ms = -5\n")]);
        one_error(&text, "site.cycle_ms", "cycle_ms", "non-negative");
        let text = with(&[(
            "max_kw = 11\n\n[[sub",
            "max_kw = 11\nbidirectional = 1\n\n[[sub",
        )]);
        one_error(
            &text,
            "substations[0].segments[0].chargers[0].bidirectional",
            "bidirectional",
            "expected a boolean",
        );
        let text = with(&[
            ("[[substations.segments.meters]]\nid = \"m1\"\n", ""),
            ("rated_kw = 100", "rated_kw = 100\nmeters = 3"),
        ]);
        one_error(
            &text,
            "substations[0].segments[0].meters",
            "meters = 3",
            "expected an array of tables, found an integer",
        );
    }

    #[test]
    fn ids_must_be_path_safe_and_not_empty() {
        let text = with(&[("id = \"tx\"", "id = \"tx/1\"")]);
        one_error(
            &text,
            "substations[0].segments[0].id",
            "tx/1",
            "contains '/'; ids may only use",
        );
        let text = with(&[("id = \"s\"", "id = \"\"")]);
        one_error(&text, "site.id", "id = \"\"", "must not be empty");
        let long = "x".repeat(MAX_ID_LEN + 1);
        let text = with(&[("id = \"m1\"", &format!("id = \"{long}\""))]);
        one_error(
            &text,
            "substations[0].segments[0].meters[0].id",
            &long,
            "more than 64",
        );
    }

    #[test]
    fn ids_are_unique_per_kind_across_the_site() {
        let second_segment = "[[substations]]\nid = \"sub2\"\n\n[[substations.segments]]\n\
            id = \"tx\" # again\nrated_kw = 50\n\n[[substations.segments.meters]]\nid = \"m2\"\n\n\
            [[vehicles]]";
        let text = with(&[("[[vehicles]]", second_segment)]);
        one_error(
            &text,
            "substations[1].segments[0].id",
            "# again",
            "duplicate segment id \"tx\"; first defined at substations[0].segments[0]",
        );
        // A charger and a meter may share an id: uniqueness is per kind.
        let text = with(&[("id = \"m1\"", "id = \"c1\"")]);
        assert!(parse("t.toml", &text).is_ok());
        let text = format!(
            "{MINIMAL}\n[[vehicles]]\nid = \"v1\" # twin\ncharger = \"c1\"\ncapacity_kwh = 50\n\
             soc_pct = 40\narrive_s = 3600\ndepart_s = 7200\nmax_kw = 11\n"
        );
        one_error(
            &text,
            "vehicles[1].id",
            "# twin",
            "duplicate vehicle id \"v1\"",
        );
    }

    #[test]
    fn a_vehicle_names_an_existing_charger() {
        let text = with(&[("charger = \"c1\"", "charger = \"c9\"")]);
        one_error(
            &text,
            "vehicles[0].charger",
            "c9",
            "no charger has the id \"c9\"",
        );
        let text = with(&[("charger = \"c1\"", "charger = \"\"")]);
        one_error(
            &text,
            "vehicles[0].charger",
            "charger = \"\"",
            "must name a charger",
        );
    }

    #[test]
    fn vehicles_on_one_charger_must_not_overlap() {
        let second = |arrive: u32| {
            format!(
                "{MINIMAL}\n[[vehicles]]\nid = \"v2\"\ncharger = \"c1\" # second\n\
                 capacity_kwh = 50\nsoc_pct = 40\narrive_s = {arrive}\ndepart_s = 7200\n\
                 max_kw = 11\n"
            )
        };
        let text = second(1800);
        one_error(
            &text,
            "vehicles[1].charger",
            "# second",
            "charger \"c1\" is taken by vehicle \"v1\" (vehicles[0]) from 0 s to 3600 s",
        );
        // [0, 3600) and [3600, 7200) touch but do not overlap.
        assert!(parse("t.toml", &second(3600)).is_ok());
    }

    #[test]
    fn every_segment_needs_a_meter() {
        let text = with(&[("[[substations.segments.meters]]\nid = \"m1\"\n", "")]);
        one_error(
            &text,
            "substations[0].segments[0].meters",
            "[[substations.segments]]",
            "every segment needs at least one meter",
        );
    }

    #[test]
    fn segment_numbers() {
        let cases = [
            (
                "rated_kw = 100",
                "rated_kw = 0",
                "rated_kw",
                "must be > 0, got 0",
            ),
            (
                "rated_kw = 100",
                "rated_kw = 100\nsafe_default_kw = -1",
                "safe_default_kw",
                "must be >= 0, got -1",
            ),
            (
                "rated_kw = 100",
                "rated_kw = 100\nsafe_default_kw = 101",
                "safe_default_kw",
                "must be <= rated_kw (100), got 101",
            ),
            (
                "rated_kw = 100",
                "rated_kw = 100\nbase_load_kw = -2",
                "base_load_kw",
                "must be >= 0, got -2",
            ),
            (
                "rated_kw = 100",
                "rated_kw = nan",
                "rated_kw",
                "must be a finite number",
            ),
            (
                "rated_kw = 100",
                "rated_kw = inf",
                "rated_kw",
                "must be a finite number",
            ),
        ];
        for (from, to, key, message) in cases {
            let text = with(&[(from, to)]);
            let marker = to.lines().last().expect("a line");
            let field = format!("substations[0].segments[0].{key}");
            one_error(&text, &field, marker, message);
        }
    }

    #[test]
    fn thermal_numbers() {
        let thermal = |body: &str| {
            with(&[(
                "rated_kw = 100\n",
                &format!("rated_kw = 100\n\n[substations.segments.thermal]\n{body}\n"),
            )])
        };
        let p = "substations[0].segments[0].thermal";
        let text = thermal("time_constant_s = 0");
        one_error(
            &text,
            &format!("{p}.time_constant_s"),
            "time_constant_s",
            "must be > 0",
        );
        let text = thermal("rated_rise_c = -1");
        one_error(
            &text,
            &format!("{p}.rated_rise_c"),
            "rated_rise_c",
            "must be > 0",
        );
        let text = thermal("limit_c = 25");
        one_error(
            &text,
            &format!("{p}.limit_c"),
            "limit_c",
            "must be > ambient_c (30), got 25",
        );
        // Only the ambient was written: the error goes there, naming the default limit.
        let text = thermal("ambient_c = 120");
        one_error(
            &text,
            &format!("{p}.ambient_c"),
            "ambient_c",
            "must be < limit_c (110, the default), got 120",
        );
        let text = thermal("limit = 3");
        one_error(
            &text,
            &format!("{p}.limit"),
            "limit = 3",
            "unknown key `limit`",
        );
    }

    #[test]
    fn charger_and_inverter_numbers() {
        let text = with(&[("max_kw = 11\n\n[[sub", "max_kw = 0\n\n[[sub")]);
        one_error(
            &text,
            "substations[0].segments[0].chargers[0].max_kw",
            "max_kw = 0",
            "must be > 0 and <= 1000, got 0",
        );
        let text = with(&[(
            "[[substations.segments.meters]]",
            "[[substations.segments.inverters]]\nid = \"i1\"\nmax_kw = -50\n\n\
             [[substations.segments.meters]]",
        )]);
        one_error(
            &text,
            "substations[0].segments[0].inverters[0].max_kw",
            "max_kw = -50",
            "must be > 0, got -50",
        );
        let text = with(&[(
            "[[substations.segments.meters]]",
            "[[substations.segments.inverters]] # <-\nid = \"i1\"\n\n\
             [[substations.segments.meters]]",
        )]);
        one_error(
            &text,
            "substations[0].segments[0].inverters[0].max_kw",
            "# <-",
            "missing required key `max_kw`",
        );
    }

    #[test]
    fn vehicle_numbers() {
        let cases: [(&str, &str, &str, &str); 10] = [
            (
                "capacity_kwh = 50",
                "capacity_kwh = 0",
                "capacity_kwh",
                "must be > 0 and <= 1000",
            ),
            (
                "capacity_kwh = 50",
                "capacity_kwh = 1001",
                "capacity_kwh",
                "got 1001",
            ),
            (
                "soc_pct = 40",
                "soc_pct = 101",
                "soc_pct",
                "must be between 0 and 100, got 101",
            ),
            (
                "soc_pct = 40",
                "soc_pct = -1",
                "soc_pct",
                "must be between 0 and 100, got -1",
            ),
            (
                "soc_pct = 40",
                "soc_pct = 40\nmin_soc_pct = 101",
                "min_soc_pct",
                "must be between 0 and 100",
            ),
            (
                "soc_pct = 40",
                "soc_pct = 40\nmin_soc_pct = 50\ntarget_soc_pct = 40",
                "target_soc_pct",
                "must be >= min_soc_pct (50), got 40",
            ),
            (
                "soc_pct = 40",
                "soc_pct = 40\nmin_soc_pct = 90",
                "min_soc_pct",
                "must be <= target_soc_pct (80, the default), got 90",
            ),
            (
                "depart_s = 3600",
                "depart_s = 3600\narrive_s = -1",
                "arrive_s",
                "got -1",
            ),
            (
                "depart_s = 3600",
                "depart_s = 0",
                "depart_s",
                "must be > arrive_s (0), got 0",
            ),
            (
                "max_kw = 11\n",
                "max_kw = -11\n",
                "max_kw",
                "must be > 0, got -11",
            ),
        ];
        for (from, to, key, message) in cases {
            // The vehicle's lines are the last ones; edit there, not in the charger.
            let (head, tail) = MINIMAL.split_at(MINIMAL.find("[[vehicles]]").expect("vehicles"));
            assert!(tail.contains(from), "{from}");
            let text = format!("{head}{}", tail.replacen(from, to, 1));
            let marker = to.trim_end().lines().last().expect("a line");
            one_error(&text, &format!("vehicles[0].{key}"), marker, message);
        }
    }

    #[test]
    fn site_and_safety_numbers() {
        let site = |line: &str| with(&[("[site]\n", &format!("[site]\n{line}\n"))]);
        one_error(
            &site("cycle_ms = 5"),
            "site.cycle_ms",
            "cycle_ms",
            "between 10 and 60000 ms",
        );
        one_error(
            &site("cycle_ms = 60001"),
            "site.cycle_ms",
            "cycle_ms",
            "got 60001",
        );
        one_error(
            &site("lease_s = 0"),
            "site.lease_s",
            "lease_s",
            "must be > 0",
        );
        let safety = |body: &str| format!("{MINIMAL}\n[safety]\n{body}\n");
        one_error(
            &safety("hold_s = -1"),
            "safety.hold_s",
            "hold_s",
            "must be between 0",
        );
        one_error(
            &safety("keepalive_timeout_s = 0"),
            "safety.keepalive_timeout_s",
            "keepalive_timeout_s",
            "must be > 0",
        );
        one_error(
            &safety("ptp_charge_only_ms = 5.0\nptp_trip_ms = 2.0"),
            "safety.ptp_trip_ms",
            "ptp_trip_ms",
            "must be > ptp_charge_only_ms (5), got 2",
        );
        one_error(
            &safety("derate_start_c = 90"),
            "safety.derate_start_c",
            "derate_start_c",
            "must be < derate_zero_c (85, the default), got 90",
        );
    }

    #[test]
    fn nominal_hz_picks_the_default_frequency_bands() {
        use crate::ladder::{FREQUENCY_STAGES_50HZ, FREQUENCY_STAGES_60HZ, VOLTAGE_STAGES};
        let safety = |body: &str| format!("{MINIMAL}\n[safety]\n{body}\n");
        let t = parse("t.toml", &safety("nominal_hz = 50")).expect("valid");
        assert_eq!(t.safety.nominal_hz, Some(GridFrequency::Hz50));
        let l = t.safety.ladder_config();
        assert_eq!(l.frequency_bands, FREQUENCY_STAGES_50HZ.bands());
        assert_eq!(
            l.voltage_bands,
            VOLTAGE_STAGES.bands(),
            "voltage stays per unit"
        );
        let t = parse("t.toml", &safety("nominal_hz = 60.0")).expect("valid");
        let l = t.safety.ladder_config();
        assert_eq!(l.frequency_bands, FREQUENCY_STAGES_60HZ.bands());
        // Not given (no real meter): 60 Hz, as the in-process simulation.
        let t = parse("t.toml", MINIMAL).expect("valid");
        assert_eq!(
            (t.safety.nominal_hz, t.safety.grid()),
            (None, GridFrequency::Hz60)
        );
        assert_eq!(t.safety.ladder_config(), LadderConfig::default());
        one_error(
            &safety("nominal_hz = 55"),
            "safety.nominal_hz",
            "nominal_hz",
            "must be 50 or 60 (Hz), got 55",
        );
        one_error(
            &safety("nominal_hz = \"50\""),
            "safety.nominal_hz",
            "nominal_hz",
            "expected a number, found a string",
        );
    }

    #[test]
    fn nominal_hz_is_required_once_a_meter_is_read_over_modbus() {
        let real = with(&[(
            "id = \"m1\"\n",
            "id = \"m1\"\nmodbus = { addr = \"127.0.0.1:1502\" }\n",
        )]);
        // No [safety] table: the error points at the meter's endpoint.
        let e = one_error(
            &real,
            "safety.nominal_hz",
            "modbus = {",
            "required (50 or 60) when meters are read over Modbus: meter \"m1\"",
        );
        assert!(e.to_string().starts_with("t.toml:"), "{e}");
        // A [safety] table without it: the error points at the table.
        let text = format!("{real}\n[safety]\nhold_s = 10\n");
        one_error(
            &text,
            "safety.nominal_hz",
            "[safety]",
            "required (50 or 60)",
        );
        let ok = format!("{real}\n[safety]\nnominal_hz = 50\n");
        assert!(parse("t.toml", &ok).is_ok());
    }

    #[test]
    fn every_band_can_be_overridden_with_its_clearing_time() {
        let text = format!(
            "{MINIMAL}\n[safety]\nnominal_hz = 50\n[safety.bands]\n\
             uf1 = {{ hz = 47.8, clearing_ms = 500 }}\n\
             of2 = {{ hz = 51.8, clearing_ms = 150.5 }}\n\
             uv1 = {{ pu = 0.8, clearing_ms = 3000 }}\n"
        );
        let t = parse("t.toml", &text).expect("valid");
        let f = t.safety.frequency_stages();
        assert_eq!(f.under1, TripBand::under(47.8, 500));
        assert_eq!(f.over2.threshold, 51.8);
        assert_eq!(f.over2.clearing_time, Duration::from_micros(150_500));
        assert_eq!(
            f.over1,
            crate::ladder::FREQUENCY_STAGES_50HZ.over1,
            "the rest default"
        );
        assert_eq!(
            t.safety.voltage_stages().under1,
            TripBand::under(0.8, 3_000)
        );
        assert_eq!(t.safety.ladder_config().frequency_bands, f.bands());
        // It reads back as written.
        let again = toml::to_string(&t).expect("serializes");
        assert_eq!(parse("round-trip.toml", &again), Ok(t));
    }

    #[test]
    fn bands_must_be_ordered_and_have_a_clearing_time() {
        let bands =
            |body: &str| format!("{MINIMAL}\n[safety]\nnominal_hz = 50\n[safety.bands]\n{body}\n");
        one_error(
            &bands("uf2 = { hz = 47.0 }"),
            "safety.bands.uf2.clearing_ms",
            "uf2",
            "missing required key `clearing_ms`",
        );
        one_error(
            &bands("of1 = { hz = 51.0, clearing_ms = 0 }"),
            "safety.bands.of1.clearing_ms",
            "of1",
            "must be > 0",
        );
        // UF2 above UF1 (the default 47.5 Hz): reported at what was written.
        one_error(
            &bands("uf2 = { hz = 47.6, clearing_ms = 100 }"),
            "safety.bands.uf2.hz",
            "uf2",
            "unordered: uf1 (47.5) must be above uf2 (47.6)",
        );
        // An under-band above nominal.
        one_error(
            &bands("uf1 = { hz = 50.5, clearing_ms = 1000 }"),
            "safety.bands.uf1.hz",
            "uf1",
            "unordered: safety.nominal_hz (50) must be above uf1 (50.5)",
        );
        // Stage 2 slower than stage 1.
        one_error(
            &bands("of2 = { hz = 52.0, clearing_ms = 5000 }"),
            "safety.bands.of2.clearing_ms",
            "of2",
            "unordered: of2 clears after of1 (5000 ms > 2000 ms)",
        );
        // Voltage: an over-band below 1 pu; a band that is not a table.
        one_error(
            &bands("ov1 = { pu = 0.95, clearing_ms = 2000 }"),
            "safety.bands.ov1.pu",
            "ov1",
            "unordered: ov1 (0.95) must be above 1 pu (nominal) (1)",
        );
        one_error(
            &bands("ov2 = 1.2"),
            "safety.bands.ov2",
            "ov2",
            "expected a table, found a float",
        );
        one_error(
            &bands("uv3 = { pu = 0.3, clearing_ms = 100 }"),
            "safety.bands.uv3",
            "uv3",
            "unknown key `uv3`",
        );
        // A frequency band in per unit: both the stray key and the missing one are named.
        let errs = errors(&bands("of1 = { pu = 51.0, clearing_ms = 100 }"));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["safety.bands.of1.hz", "safety.bands.of1.pu"]);
        assert!(errs[1]
            .message
            .contains("unknown key `pu`; expected one of: hz"));
    }

    #[test]
    fn rocof_reading_age_and_temperature_failures_are_checked() {
        let safety = |body: &str| format!("{MINIMAL}\n[safety]\n{body}\n");
        let t = parse(
            "t.toml",
            &safety(
                "rocof_hz_per_s = 1.0\nrocof_window_ms = 200\nmax_reading_age_ms = 250\n\
                 temperature_read_failures = 5",
            ),
        )
        .expect("valid");
        let l = t.safety.ladder_config();
        assert_eq!(l.rocof_hz_per_s, 1.0);
        assert_eq!(l.rocof_window, Duration::from_millis(200));
        assert_eq!(l.max_reading_age, Duration::from_millis(250));
        assert_eq!(t.safety.temperature_read_failures, 5);
        for (body, field, message) in [
            ("rocof_hz_per_s = 0", "safety.rocof_hz_per_s", "must be > 0"),
            (
                "rocof_window_ms = 5",
                "safety.rocof_window_ms",
                "between 20 and 10000 ms",
            ),
            (
                "max_reading_age_ms = 50",
                "safety.max_reading_age_ms",
                "between 100 and 10000 ms, got 50",
            ),
            (
                "temperature_read_failures = 0",
                "safety.temperature_read_failures",
                "between 1 and 1000",
            ),
        ] {
            let marker = body.split(' ').next().expect("a key");
            one_error(&safety(body), field, marker, message);
        }
    }

    #[test]
    fn all_errors_are_reported_at_once_in_file_order() {
        let text = with(&[
            ("id = \"s\"", "id = \"s s\""),
            ("rated_kw = 100", "rated_kw = -1\nfoo = 2"),
            (
                "id = \"m1\"",
                "id = \"m1\"\n\n[[substations.segments.meters]]\nid = \"m1\"",
            ),
            ("charger = \"c1\"", "charger = \"c2\""),
            ("soc_pct = 40", "soc_pct = 400"),
        ]);
        let errs = errors(&text);
        let got: Vec<(&str, usize)> = errs.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("site.id", line_of(&text, "\"s s\"")),
                (
                    "substations[0].segments[0].rated_kw",
                    line_of(&text, "rated_kw = -1")
                ),
                ("substations[0].segments[0].foo", line_of(&text, "foo = 2")),
                (
                    "substations[0].segments[0].meters[1].id",
                    text.lines()
                        .collect::<Vec<_>>()
                        .iter()
                        .rposition(|l| *l == "id = \"m1\"")
                        .expect("m1")
                        + 1
                ),
                ("vehicles[0].charger", line_of(&text, "\"c2\"")),
                ("vehicles[0].soc_pct", line_of(&text, "soc_pct = 400")),
            ]
        );
        let shown = ConfigErrors(errs).to_string();
        assert_eq!(shown.lines().count(), 6, "{shown}");
    }

    #[test]
    fn a_value_that_failed_to_read_is_not_reported_twice() {
        // A wrongly typed charger id must not also make the vehicle's reference unknown, and
        // a wrongly typed min SoC must not also fail the target check.
        let text = with(&[
            ("id = \"c1\"", "id = 1"),
            (
                "soc_pct = 40",
                "soc_pct = 40\nmin_soc_pct = \"high\"\ntarget_soc_pct = 10",
            ),
        ]);
        let errs = errors(&text);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "substations[0].segments[0].chargers[0].id",
                "vehicles[0].min_soc_pct"
            ]
        );
    }

    #[test]
    fn load_reads_files_and_reports_unreadable_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("site.toml");
        std::fs::write(&good, MINIMAL).expect("write");
        assert_eq!(load(&good), parse("t.toml", MINIMAL));
        let missing = dir.path().join("nope.toml");
        let ConfigErrors(errs) = load(&missing).expect_err("missing file");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].file.ends_with("nope.toml"));
        assert!(errs[0].message.starts_with("cannot open"), "{}", errs[0]);
        let binary = dir.path().join("bin.toml");
        std::fs::write(&binary, b"[site]\nid = \"\xff\"\n").expect("write");
        let ConfigErrors(errs) = load(&binary).expect_err("not UTF-8");
        assert_eq!((errs[0].line, errs[0].column), (2, 7), "{}", errs[0]);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, with(&[("soc_pct = 40", "soc_pct = 140")])).expect("write");
        let ConfigErrors(errs) = load(&bad).expect_err("invalid");
        assert_eq!(errs[0].file, bad.display().to_string());
    }

    #[test]
    fn ladder_config_takes_the_safety_settings() {
        let safety = Safety {
            hold_s: 12.5,
            keepalive_timeout_s: 2.0,
            ptp_charge_only_ms: 0.5,
            ptp_trip_ms: 50.0,
            derate_start_c: 60.0,
            derate_zero_c: 80.0,
            clock: None,
            ..Safety::default()
        };
        let l = safety.ladder_config();
        assert_eq!(l.hold_time, Duration::from_millis(12_500));
        assert_eq!(l.keepalive_timeout, Duration::from_secs(2));
        assert_eq!(l.ptp_charge_only, Duration::from_micros(500));
        assert_eq!(l.ptp_trip, Duration::from_millis(50));
        assert_eq!((l.derate_start_c, l.derate_zero_c), (60.0, 80.0));
        assert_eq!(l.voltage_bands, LadderConfig::default().voltage_bands);
        assert_eq!(Safety::default().ladder_config(), LadderConfig::default());
        // Out of range (unvalidated) settings keep the defaults instead of panicking.
        let nonsense = Safety {
            hold_s: -1.0,
            keepalive_timeout_s: f64::NAN,
            ptp_charge_only_ms: f64::INFINITY,
            ptp_trip_ms: 1e300,
            derate_start_c: f64::NAN,
            derate_zero_c: 80.0,
            clock: None,
            ..Safety::default()
        };
        let l = nonsense.ladder_config();
        let d = LadderConfig::default();
        assert_eq!(
            (
                l.hold_time,
                l.keepalive_timeout,
                l.ptp_charge_only,
                l.ptp_trip
            ),
            (
                d.hold_time,
                d.keepalive_timeout,
                d.ptp_charge_only,
                d.ptp_trip
            )
        );
        assert_eq!(l.derate_start_c, d.derate_start_c);
    }

    #[test]
    fn validate_checks_built_topologies() {
        let mut t = demo();
        t.vehicles[0].soc_pct = f64::NAN;
        t.substations[0].segments[1].meters.clear();
        let ConfigErrors(errs) = t.validate().expect_err("invalid");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["substations[0].segments[1].meters", "vehicles[0].soc_pct"]
        );
        assert!(errs.iter().all(|e| (e.line, e.column) == (0, 0)));
    }

    #[test]
    fn generated_sites_are_valid_and_deterministic() {
        for (segments, sessions) in [(0, 0), (1, 0), (0, 3), (1, 1), (5, 17), (40, 10_000)] {
            let t = generated(segments, sessions, 42);
            assert_eq!(
                t.validate(),
                Ok(()),
                "{segments} segments, {sessions} sessions"
            );
            assert_eq!(t.session_count(), sessions);
            let expected_segments = if sessions > 0 {
                segments.max(1)
            } else {
                segments
            };
            assert_eq!(t.segments().count(), expected_segments);
            assert_eq!(t.chargers().count(), sessions);
        }
        let t = generated(4, 100, 1);
        assert_eq!(t, generated(4, 100, 1));
        assert_ne!(t, generated(4, 100, 2));
        assert_eq!(t.safety.hold_s, GENERATED_HOLD_S);
        assert_eq!(t.charger_segment("evse-5"), Some("tx-1"), "round-robin");
        for (seg, c) in t.chargers() {
            let n: usize = c.id["evse-".len()..].parse().expect("numbered");
            assert_eq!(c.bidirectional, n % 4 != 3, "{}", c.id);
            assert!(c.max_kw == 11.0 || c.max_kw == 22.0);
            let total: f64 = seg.chargers.iter().map(|c| c.max_kw).sum();
            assert!((seg.rated_kw - (0.6 * total).max(GENERATED_MIN_RATED_KW)).abs() < 1e-9);
            assert_eq!(seg.meters.len(), 1);
            assert_eq!(seg.inverters[0].max_kw, 100.0);
        }
        for v in &t.vehicles {
            assert!((40.0..=100.0).contains(&v.capacity_kwh));
            assert!((30.0..=90.0).contains(&v.soc_pct));
            assert!((3_600.0..=36_000.0).contains(&v.depart_s));
            assert_eq!(v.charger, format!("evse-{}", &v.id["ev-".len()..]));
        }
    }

    #[test]
    fn accessors() {
        let t = demo();
        assert_eq!(t.segment("tx-2").map(|s| s.rated_kw), Some(120.0));
        assert!(t.segment("tx-9").is_none());
        assert_eq!(
            t.vehicle("ev-1").map(|v| v.charger.as_str()),
            Some("evse-1")
        );
        assert!(t.vehicle("ev-99").is_none());
        assert_eq!(t.charger("evse-4").map(|c| c.bidirectional), Some(false));
        assert_eq!(t.session_count(), t.vehicles.len());
        assert_eq!(
            t.chargers().count(),
            t.segments().map(|(_, s)| s.chargers.len()).sum::<usize>()
        );
    }

    /// A demo text with one character replaced, inserted or removed.
    fn mutated_demo() -> impl Strategy<Value = String> {
        let len = DEMO.chars().count();
        (0..len, 0u8..3, prop::char::any()).prop_map(|(at, op, c)| {
            let mut chars: Vec<char> = DEMO.chars().collect();
            match op {
                0 => chars[at] = c,
                1 => chars.insert(at, c),
                _ => {
                    chars.remove(at);
                }
            }
            chars.into_iter().collect()
        })
    }

    fn check_positions(
        text: &str,
        result: &Result<Topology, ConfigErrors>,
    ) -> Result<(), TestCaseError> {
        let lines = text.split('\n').count();
        match result {
            Ok(t) => prop_assert_eq!(t.validate(), Ok(())),
            Err(ConfigErrors(errs)) => {
                prop_assert!(!errs.is_empty());
                for e in errs {
                    prop_assert!(e.line >= 1 && e.line <= lines, "{} of {}", e, lines);
                    prop_assert!(e.column >= 1, "{}", e);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let result = parse("x.toml", &text);
            check_positions(&text, &result)?;
        }

        #[test]
        fn parse_never_panics_on_toml_like_text(text in "[\\[\\]a-z_.=\"0-9 \n#{},-]{0,200}") {
            let result = parse("x.toml", &text);
            check_positions(&text, &result)?;
        }

        #[test]
        fn parse_never_panics_on_a_mutated_demo(text in mutated_demo()) {
            let result = parse("demo.toml", &text);
            check_positions(&text, &result)?;
        }
    }

    #[test]
    fn metrics_granularity_is_aggregated_unless_asked_and_a_bad_value_is_named() {
        let base = demo_toml_without_metrics();
        let t = parse("t.toml", &base).unwrap();
        assert_eq!(t.metrics.sessions, Granularity::Aggregated);
        let t = parse(
            "t.toml",
            &format!("{base}\n[metrics]\nsessions = \"per_actor\"\n"),
        )
        .unwrap();
        assert_eq!(t.metrics.sessions, Granularity::PerActor);
        let e = parse(
            "t.toml",
            &format!("{base}\n[metrics]\nsessions = \"each\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("metrics.sessions") && e.contains("\"each\"") && e.contains("per_actor"),
            "{e}"
        );
    }

    fn demo_toml_without_metrics() -> String {
        let demo = include_str!("../../configs/demo.toml");
        match demo.find("[metrics]") {
            Some(i) => {
                let rest = &demo[i + "[metrics]".len()..];
                let end = rest
                    .find("\n[")
                    .map_or(demo.len(), |j| i + "[metrics]".len() + j + 1);
                format!("{}{}", &demo[..i], &demo[end..])
            }
            None => demo.to_string(),
        }
    }
}
