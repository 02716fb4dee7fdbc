//! The Rust SunSpec point tables against the official model definitions: every model, point,
//! offset, type, size, scale factor and access as printed by tests/py/modbus_sunspec_tables.py
//! from pysunspec2's JSON files.

use crate::modbus_support;

use std::process::Command;

use gridvisor_transports::modbus::sunspec::tables::MODELS;
use modbus_support::{py_dir, python, require_pymodbus};

fn rust_tables() -> String {
    let mut out = String::new();
    for m in MODELS {
        out.push_str(&format!("model {} {}\n", m.id, m.len));
        for p in m.points {
            out.push_str(&format!(
                "{} {} {} {} {} {} {}\n",
                m.id,
                p.name,
                p.offset,
                p.ty.name(),
                p.ty.size(),
                p.sf.unwrap_or("-"),
                if p.writable { "rw" } else { "r" }
            ));
        }
    }
    out
}

#[test]
fn tables_match_the_official_model_definitions() {
    require_pymodbus();
    let ids: Vec<String> = MODELS.iter().map(|m| m.id.to_string()).collect();
    let out = Command::new(python())
        .arg(py_dir().join("modbus_sunspec_tables.py"))
        .args(&ids)
        .output()
        .expect("run modbus_sunspec_tables.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let official = String::from_utf8(out.stdout).unwrap();
    let ours = rust_tables();
    for (i, (a, b)) in ours.lines().zip(official.lines()).enumerate() {
        assert_eq!(a, b, "line {}: ours vs the model definitions", i + 1);
    }
    assert_eq!(ours.lines().count(), official.lines().count());
}

#[test]
fn tables_are_consistent() {
    for m in MODELS {
        let mut next = 0u32;
        for p in m.points {
            assert_eq!(
                u32::from(p.offset),
                next,
                "model {} {}: offsets follow sizes",
                m.id,
                p.name
            );
            next = p.end();
            if let Some(sf) = p.sf {
                let sf = m
                    .point(sf)
                    .unwrap_or_else(|| panic!("model {}: no {sf}", m.id));
                assert_eq!(sf.ty.name(), "sunssf");
            }
        }
        assert_eq!(next, u32::from(m.len) + 2, "model {}: L", m.id);
        assert_eq!(m.points[0].name, "ID");
        assert_eq!(m.points[1].name, "L");
    }
}
