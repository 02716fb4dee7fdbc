//! Each fault of a simulated device, injected while it runs, seen by our transports client
//! over real TCP as the right typed error, and the device healthy again once the fault is
//! cleared: drop → IO error (connection closed by the device), hang → time-out, exception →
//! the typed exception, bad value → a decode error naming the point. Also the connection
//! bound and stopping.

use crate::modbus_support;

use std::time::Duration;

use gridvisor_sim::modbus::{
    BadValue, Fault, Grid, GridModel, InverterParams, InverterSim, ServerConfig, SimError,
    SimServer,
};
use gridvisor_transports::modbus::{
    sunspec::SunSpecDevice, DecodeError, ExceptionCode, ModbusClient, ModbusError,
};
use modbus_support::{client, eventually, test_config, Site};

const POLL: Duration = Duration::from_millis(10);
const ATTEMPTS: u32 = 300;

async fn healthy(c: &ModbusClient) {
    c.wait_backoff().await;
    let regs = c.read_holding_registers(40000, 2).await.unwrap();
    assert_eq!(regs, vec![0x5375, 0x6e53], "SunS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_connections_and_refuses_new_ones() {
    let site = Site::start().await;
    let s = &site.inverter;
    let c = client(s.addr());
    healthy(&c).await;
    assert_eq!(s.connections(), 1);

    s.set_fault(Fault::Drop).unwrap();
    assert_eq!(s.fault(), Fault::Drop);
    // The open connection is closed by the device at once, before any request.
    eventually("the connection closed", ATTEMPTS, POLL, || async {
        s.connections() == 0
    })
    .await;
    let e = c.read_holding_registers(40000, 2).await.unwrap_err();
    assert!(matches!(e, ModbusError::Io { .. }), "{e:?}");
    // A new connection is accepted and closed.
    c.wait_backoff().await;
    let e = c.read_holding_registers(40000, 2).await.unwrap_err();
    assert!(matches!(e, ModbusError::Io { .. }), "{e:?}");
    assert!(s.refused() >= 1);

    s.set_fault(Fault::None).unwrap();
    healthy(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_reads_and_never_answers() {
    let site = Site::start().await;
    let s = &site.inverter;
    let c = client(s.addr());
    healthy(&c).await;
    let before = s.requests();
    s.set_fault(Fault::Hang).unwrap();
    let e = c.read_holding_registers(40000, 2).await.unwrap_err();
    assert!(
        matches!(e, ModbusError::Timeout { after, .. } if after == test_config(s.addr()).request_timeout),
        "{e:?}"
    );
    assert_eq!(s.requests(), before + 1, "the request was read");
    s.set_fault(Fault::None).unwrap();
    healthy(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_answers_every_request_with_the_code() {
    let site = Site::start().await;
    let s = &site.meter;
    let c = client(s.addr());
    healthy(&c).await;
    for code in [
        ExceptionCode::ServerDeviceBusy,
        ExceptionCode::ServerDeviceFailure,
        ExceptionCode::Other(0x42),
    ] {
        s.set_fault(Fault::Exception(code)).unwrap();
        let e = c.read_holding_registers(40000, 2).await.unwrap_err();
        assert!(
            matches!(e, ModbusError::Exception { code: got, function: 0x03, .. } if got == code),
            "{e:?}"
        );
        let e = c.write_single_register(40000, 1).await.unwrap_err();
        assert_eq!(e.exception_code(), Some(code));
    }
    assert!(c.is_connected().await, "an exception keeps the connection");
    s.set_fault(Fault::None).unwrap();
    healthy(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_value_is_a_decode_error_naming_the_point() {
    let site = Site::start().await;
    let s = &site.inverter;
    let dev = SunSpecDevice::discover(client(s.addr())).await.unwrap();
    assert!(dev.ac_measurement().await.is_ok());
    s.set_fault(Fault::BadValue(BadValue::scale_factor(701, "W_SF")))
        .unwrap();
    match dev.ac_measurement().await {
        Err(ModbusError::Decode(DecodeError::ScaleFactorOutOfRange { point, sf, value })) => {
            assert_eq!((point.as_str(), sf.as_str(), value), ("W", "W_SF", 0x7FFF));
        }
        other => panic!("{other:?}"),
    }
    // Other models still read.
    assert!(dev.storage().await.is_ok());
    // A SoC of 250 % in 713.
    s.set_fault(Fault::BadValue(BadValue {
        model: 713,
        point: "SoC".into(),
        raw: vec![2500],
    }))
    .unwrap();
    assert!(matches!(
        dev.storage().await,
        Err(ModbusError::Decode(DecodeError::OutOfRange { ref point, .. })) if point == "SoC"
    ));
    // Points the map lacks, or a raw value of the wrong size, are refused.
    let unknown = s.set_fault(Fault::BadValue(BadValue::scale_factor(203, "W_SF")));
    assert!(matches!(
        unknown,
        Err(SimError::UnknownPoint { model: 203, .. })
    ));
    let wrong_size = s.set_fault(Fault::BadValue(BadValue {
        model: 701,
        point: "Hz".into(),
        raw: vec![1],
    }));
    assert!(matches!(wrong_size, Err(SimError::Config { .. })));
    s.set_fault(Fault::None).unwrap();
    assert!(dev.ac_measurement().await.is_ok());
    assert!(dev.storage().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_stop_closes_everything() {
    let grid = Grid::new(GridModel::new(1));
    let s = SimServer::new(ServerConfig { max_connections: 2 })
        .start(InverterSim::new(InverterParams::new("B"), grid).unwrap())
        .await
        .unwrap();
    let addr = s.addr();
    assert!(addr.ip().is_loopback() && addr.port() > 1024, "{addr}");
    let (a, b, third) = (client(addr), client(addr), client(addr));
    healthy(&a).await;
    healthy(&b).await;
    assert_eq!(s.connections(), 2);
    let e = third.read_holding_registers(40000, 2).await.unwrap_err();
    assert!(matches!(e, ModbusError::Io { .. }), "{e:?}");
    assert_eq!(s.refused(), 1);
    a.close().await;
    eventually("a slot freed", ATTEMPTS, POLL, || async {
        s.connections() == 1
    })
    .await;
    healthy(&third).await;

    s.stop().await.unwrap();
    b.wait_backoff().await;
    let e = b.read_holding_registers(40000, 2).await.unwrap_err();
    assert!(matches!(e, ModbusError::Io { .. }), "{e:?}");
    let fresh = client(addr);
    let e = fresh.read_holding_registers(40000, 2).await.unwrap_err();
    assert!(
        matches!(
            e,
            ModbusError::Io {
                op: gridvisor_transports::modbus::Operation::Connect,
                ..
            }
        ),
        "nothing listens any more: {e:?}"
    );
}
