//! Shared by the simulated-device tests: a site (grid, inverter, meter of the inverter's
//! power) served on 127.0.0.1 at OS-chosen ports, test client settings, bounded waits.
#![allow(dead_code)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use gridvisor_sim::modbus::{
    Grid, GridModel, InverterParams, InverterSim, MeterParams, MeterSim, ServerConfig,
    ServerHandle, SimServer,
};
use gridvisor_transports::modbus::{ClientConfig, ModbusClient};

/// The grid, an inverter and a meter at the site's connection: the meter reads the site's
/// import, i.e. minus the inverter's power (which is positive when it injects).
pub struct Site {
    pub grid: Grid,
    pub inverter: ServerHandle<InverterSim>,
    pub meter: ServerHandle<MeterSim>,
    /// The inverter's power as of the last [`Site::step`], which the meter's source reads:
    /// the meter sees what the inverter did in the same step, whatever the order of reads.
    power: Arc<Mutex<f64>>,
}

impl Site {
    pub async fn start() -> Self {
        let grid = Grid::new(GridModel::new(42));
        let server = SimServer::new(ServerConfig::default());
        let inverter = server
            .start(InverterSim::new(InverterParams::new("INV-1"), grid.clone()).unwrap())
            .await
            .unwrap();
        let power = Arc::new(Mutex::new(0.0f64));
        let p = power.clone();
        let source = move || -*p.lock().unwrap();
        let meter = server
            .start(MeterSim::new(MeterParams::new("MTR-1"), source, grid.clone()).unwrap())
            .await
            .unwrap();
        eprintln!(
            "simulated inverter on {}, meter on {}",
            inverter.addr(),
            meter.addr()
        );
        Self {
            grid,
            inverter,
            meter,
            power,
        }
    }

    /// Steps the inverter, then the meter, `n` times by `dt`.
    pub fn step(&self, n: u32, dt: Duration) {
        for _ in 0..n {
            self.inverter.step(dt).unwrap();
            let w = self.inverter.with_device(|d| d.state().power_w);
            *self.power.lock().unwrap() = w;
            self.meter.step(dt).unwrap();
        }
    }
}

/// Short time-outs and back-off, so that the fault tests run fast.
pub fn test_config(addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(addr);
    c.connect_timeout = Duration::from_secs(2);
    c.request_timeout = Duration::from_secs(1);
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(100);
    c
}

pub fn client(addr: SocketAddr) -> ModbusClient {
    ModbusClient::new(test_config(addr))
}

/// Polls `cond` up to `attempts` times, `interval` apart; panics naming `what` when it never
/// holds.
pub async fn eventually<F, Fut>(what: &str, attempts: u32, interval: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..attempts {
        if cond().await {
            return;
        }
        tokio::time::sleep(interval).await;
    }
    panic!("{what}: not after {attempts} attempts {interval:?} apart");
}
