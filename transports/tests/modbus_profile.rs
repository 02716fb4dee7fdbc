//! The plain register profile from TOML: the field's example (active and reactive power at
//! 40001 and 40002, a discharge limit at 0x4001 up to 15.0 kW), Modicon addressing, and
//! configuration errors; then the example against a raw Modbus peer.

use crate::modbus_support;

use gridvisor_transports::modbus::{
    profile::{Addressing, RegisterProfile, RegisterType, Table},
    DecodeError, EncodeError, RegisterWrite, WordOrder,
};
use modbus_support::{client, Mode, Peer, FIELD_PROFILE};

#[test]
fn the_field_example() {
    let p: RegisterProfile = toml::from_str(FIELD_PROFILE).unwrap();
    p.validate().unwrap();
    assert_eq!(p.addressing, Addressing::Protocol);
    let limit = p.point("discharge_limit").unwrap();
    assert_eq!(
        limit.location(p.addressing).unwrap(),
        (Table::Holding, 0x4001)
    );
    assert_eq!(limit.unit.as_deref(), Some("kW"));
    assert_eq!(
        p.decode("active_power", &[(-1234i16) as u16]).unwrap(),
        -123.4
    );
    assert_eq!(p.decode("reactive_power", &[567]).unwrap(), 56.7);
    assert_eq!(p.decode("discharge_limit", &[150]).unwrap(), 15.0);
    assert_eq!(
        p.encode("discharge_limit", 15.0).unwrap(),
        RegisterWrite {
            addr: 0x4001,
            values: vec![150]
        }
    );
    assert_eq!(p.encode("discharge_limit", 0.04).unwrap().values, vec![0]);
    // Out of range, both ways: a clear error, never a wrapped register.
    let err = p.encode("discharge_limit", 15.01).unwrap_err();
    assert_eq!(err.to_string(), "discharge_limit: 15.01 is outside 0..=15");
    assert!(matches!(
        p.encode("discharge_limit", -0.1),
        Err(EncodeError::OutOfRange { .. })
    ));
    let err = p.decode("discharge_limit", &[151]).unwrap_err();
    assert!(matches!(err, DecodeError::OutOfRange { .. }), "{err}");
    assert!(
        err.to_string().contains("15.1 is out of range (0..=15)"),
        "{err}"
    );
    assert!(matches!(
        p.encode("active_power", 1.0),
        Err(EncodeError::ReadOnly { .. })
    ));
    assert!(matches!(
        p.decode("nope", &[1]),
        Err(DecodeError::UnknownPoint { .. })
    ));
    assert!(matches!(
        p.encode("discharge_limit", f64::NAN),
        Err(EncodeError::NotFinite { .. })
    ));
}

#[test]
fn modicon_addressing_and_32_bit_points() {
    let p: RegisterProfile = toml::from_str(
        r#"
        addressing = "modicon"
        [[points]]
        name = "energy"
        address = 30011
        type = "u32"
        word_order = "low_first"
        scale = 0.01
        unit = "kWh"
        [[points]]
        name = "setpoint"
        address = 400101
        type = "i32"
        writable = true
        [[points]]
        name = "frequency"
        address = 40003
        type = "f32"
        "#,
    )
    .unwrap();
    p.validate().unwrap();
    let energy = p.point("energy").unwrap();
    assert_eq!(energy.ty, RegisterType::U32);
    assert_eq!(energy.word_order, WordOrder::LowFirst);
    assert_eq!(energy.location(p.addressing).unwrap(), (Table::Input, 10));
    assert_eq!(p.decode("energy", &[0x86A0, 0x0001]).unwrap(), 1000.0);
    assert_eq!(
        p.encode("setpoint", -2.0).unwrap(),
        RegisterWrite {
            addr: 100,
            values: vec![0xFFFF, 0xFFFE]
        }
    );
    let hz = 50.02f32.to_bits();
    assert_eq!(
        p.decode("frequency", &[(hz >> 16) as u16, hz as u16])
            .unwrap(),
        f64::from(50.02f32)
    );
}

#[test]
fn configuration_errors() {
    let bad = |toml: &str| -> String {
        match toml::from_str::<RegisterProfile>(toml) {
            Err(e) => e.to_string(),
            Ok(p) => p.validate().unwrap_err().to_string(),
        }
    };
    assert!(
        bad(r#"points = [{ name = "a", address = 1, type = "u8" }]"#).contains("unknown variant")
    );
    assert!(
        bad(r#"points = [{ name = "a", address = 1, type = "u16", scael = 1.0 }]"#)
            .contains("unknown field")
    );
    assert!(
        bad(r#"points = [{ name = "a", address = 1, type = "u16", scale = 0.0 }]"#)
            .contains("scale 0")
    );
    assert!(
        bad(r#"points = [{ name = "a", address = 70000, type = "u16" }]"#).contains("past 65535")
    );
    assert!(
        bad(r#"points = [{ name = "a", address = 65535, type = "u32" }]"#).contains("past 65535")
    );
    assert!(bad(
        r#"points = [{ name = "a", address = 1, type = "u16" }, { name = "a", address = 2, type = "u16" }]"#
    )
    .contains("used twice"));
    assert!(
        bad(r#"points = [{ name = "a", address = 1, type = "u16", min = 5.0, max = 1.0 }]"#)
            .contains("above max")
    );
    assert!(bad(
        r#"points = [{ name = "a", address = 1, type = "u16", table = "input", writable = true }]"#
    )
    .contains("cannot be written"));
    assert!(bad(r#"addressing = "modicon"
        points = [{ name = "a", address = 10, type = "u16" }]"#)
    .contains("not a Modicon"));
}

#[tokio::test]
async fn the_field_example_against_a_device() {
    // The raw peer's registers hold their own address: 40001 reads 40001 (-25535 as i16).
    let peer = Peer::start(Mode::Good).await;
    let c = client(peer.addr);
    let p: RegisterProfile = toml::from_str(FIELD_PROFILE).unwrap();
    assert_eq!(
        p.read(&c, "active_power").await.unwrap(),
        f64::from(40001u16 as i16) / 10.0
    );
    // 0x4001 reads 16385: 1638.5 kW is above the limit's max: a clear error.
    let err = p.read(&c, "discharge_limit").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("discharge_limit: 1638.5 is out of range"),
        "{err}"
    );
    p.write(&c, "discharge_limit", 12.5).await.unwrap();
    assert!(p.write(&c, "discharge_limit", 16.0).await.is_err());
    assert_eq!(c.stats().requests, 3);
}
