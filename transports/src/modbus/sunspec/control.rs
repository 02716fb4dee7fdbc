//! Encoders of the model 704 controls gridvisor uses: a maximum active power limit in percent
//! of `WMax`, and an active power setpoint (in watts or in percent), each with its reversion
//! ("revert") timer, so that the device falls back by itself when nobody refreshes the command
//! (see ARCHITECTURE.md: a lease ends safely even when no actor is left to end it).
//!
//! Every value is range-checked before any register write is produced. The writes put the
//! values and the reversion settings first and the enable last, so that a device never runs
//! an enabled function with half-written settings.

use std::time::Duration;

use super::models::{DerCtlScales, SetpointMode};
use super::point::{int_regs, unscale, PointType};
use super::tables::MODEL_704;
use crate::modbus::{error::EncodeError, regs::RegisterWrite};

/// A maximum active power limit command (`WMaxLimPct*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerLimit {
    /// The limit, percent of the device's `WMax`, 0..=100.
    pub pct: f64,
    /// The reversion time: without a new command within it, the device reverts. Whole
    /// seconds, rounded down (a device reverts no later than asked), at least 1 s.
    pub revert_after: Duration,
    /// The limit after reversion (percent); `None` disables the limit on reversion.
    pub revert_to_pct: Option<f64>,
}

/// An active power setpoint command (`WSet*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivePowerSetpoint {
    /// Whether `value` (and `revert_to`) are watts or percent of `WMax`.
    pub mode: SetpointMode,
    /// The setpoint: watts (the device's sign convention: positive injects), or percent
    /// -100..=100.
    pub value: f64,
    /// The reversion time (see [`PowerLimit::revert_after`]).
    pub revert_after: Duration,
    /// The setpoint after reversion, in the same unit; `None` disables the setpoint on
    /// reversion.
    pub revert_to: Option<f64>,
}

/// Encodes a reversion time: whole seconds (rounded down), 1..=0xFFFFFFFE.
pub fn revert_secs(after: Duration, point: &str) -> Result<u32, EncodeError> {
    let secs = after.as_secs();
    if !(1..=0xFFFF_FFFE).contains(&secs) {
        return Err(EncodeError::OutOfRange {
            point: point.to_owned(),
            value: after.as_secs_f64(),
            min: 1.0,
            max: f64::from(0xFFFF_FFFEu32),
        });
    }
    Ok(secs as u32)
}

fn check_range(point: &str, value: f64, min: f64, max: f64) -> Result<(), EncodeError> {
    if !value.is_finite() {
        return Err(EncodeError::NotFinite {
            point: point.to_owned(),
            value,
        });
    }
    if !(min..=max).contains(&value) {
        return Err(EncodeError::OutOfRange {
            point: point.to_owned(),
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn scaled(point: &str, value: f64, sf: Option<i8>, sf_name: &str) -> Result<Vec<u16>, EncodeError> {
    let def = MODEL_704.point(point).ok_or_else(|| EncodeError::Invalid {
        point: point.to_owned(),
        detail: "not a point of model 704".into(),
    })?;
    let sf = sf.ok_or_else(|| EncodeError::Scale {
        point: point.to_owned(),
        detail: format!("the device does not implement {sf_name}"),
    })?;
    Ok(int_regs(def.ty, unscale(value, sf, def.ty, point)?))
}

/// One write of consecutive 704 points, checked against the table (each point's registers in
/// order, without gaps).
fn write(addr: u16, points: &[(&str, Vec<u16>)]) -> Result<RegisterWrite, EncodeError> {
    let mut start = None;
    let mut next = None;
    let mut values = Vec::new();
    for (name, regs) in points {
        let def = MODEL_704.point(name).ok_or_else(|| EncodeError::Invalid {
            point: (*name).to_owned(),
            detail: "not a point of model 704".into(),
        })?;
        if !def.writable || regs.len() != usize::from(def.ty.size()) {
            return Err(EncodeError::Invalid {
                point: (*name).to_owned(),
                detail: format!(
                    "not a writable {} point of {} registers",
                    def.ty,
                    regs.len()
                ),
            });
        }
        if next.is_some_and(|n| n != def.offset) {
            return Err(EncodeError::Invalid {
                point: (*name).to_owned(),
                detail: "not next to the previous point of the write".into(),
            });
        }
        start.get_or_insert(def.offset);
        next = Some(def.offset + def.ty.size());
        values.extend_from_slice(regs);
    }
    let offset = start.unwrap_or(0);
    let addr = addr
        .checked_add(offset)
        .filter(|a| usize::from(*a) + values.len() <= 0x1_0000);
    let addr = addr.ok_or_else(|| EncodeError::Invalid {
        point: "704".into(),
        detail: "the model's registers run past address 65535".into(),
    })?;
    Ok(RegisterWrite { addr, values })
}

fn u32_regs(v: u32) -> Vec<u16> {
    int_regs(PointType::Uint32, i128::from(v))
}

impl DerCtlScales {
    /// The writes that set a maximum active power limit with its reversion, enable last:
    /// `WMaxLimPct`, `WMaxLimPctRvrt`, `WMaxLimPctEnaRvrt`, `WMaxLimPctRvrtTms` in one write,
    /// then `WMaxLimPctEna` = 1.
    pub fn power_limit(&self, cmd: &PowerLimit) -> Result<Vec<RegisterWrite>, EncodeError> {
        check_range("WMaxLimPct", cmd.pct, 0.0, 100.0)?;
        let revert_pct = cmd.revert_to_pct.unwrap_or(cmd.pct);
        check_range("WMaxLimPctRvrt", revert_pct, 0.0, 100.0)?;
        let secs = revert_secs(cmd.revert_after, "WMaxLimPctRvrtTms")?;
        let sf = self.wmax_lim_pct;
        Ok(vec![
            write(
                self.addr,
                &[
                    (
                        "WMaxLimPct",
                        scaled("WMaxLimPct", cmd.pct, sf, "WMaxLimPct_SF")?,
                    ),
                    (
                        "WMaxLimPctRvrt",
                        scaled("WMaxLimPctRvrt", revert_pct, sf, "WMaxLimPct_SF")?,
                    ),
                    (
                        "WMaxLimPctEnaRvrt",
                        vec![u16::from(cmd.revert_to_pct.is_some())],
                    ),
                    ("WMaxLimPctRvrtTms", u32_regs(secs)),
                ],
            )?,
            write(self.addr, &[("WMaxLimPctEna", vec![1])])?,
        ])
    }

    /// The write that disables the maximum active power limit (`WMaxLimPctEna` = 0).
    pub fn power_limit_disable(&self) -> Result<Vec<RegisterWrite>, EncodeError> {
        Ok(vec![write(self.addr, &[("WMaxLimPctEna", vec![0])])?])
    }

    /// The writes that set an active power setpoint with its reversion, enable last:
    /// `WSetMod`; then in watts `WSet`, `WSetRvrt` (with `WSetMod` in one write) and
    /// `WSetEnaRvrt`, `WSetRvrtTms`; in percent `WSetPct`, `WSetPctRvrt`, `WSetEnaRvrt`,
    /// `WSetRvrtTms`; then `WSetEna` = 1.
    pub fn setpoint(&self, cmd: &ActivePowerSetpoint) -> Result<Vec<RegisterWrite>, EncodeError> {
        let revert = cmd.revert_to.unwrap_or(cmd.value);
        let ena_rvrt = vec![u16::from(cmd.revert_to.is_some())];
        let secs = u32_regs(revert_secs(cmd.revert_after, "WSetRvrtTms")?);
        let mode = vec![cmd.mode.raw()];
        let mut writes = match cmd.mode {
            SetpointMode::Watts => {
                let (lo, hi) = (-f64::from(i32::MAX), f64::from(i32::MAX));
                check_range("WSet", cmd.value, lo, hi)?;
                check_range("WSetRvrt", revert, lo, hi)?;
                vec![
                    write(
                        self.addr,
                        &[
                            ("WSetMod", mode),
                            ("WSet", scaled("WSet", cmd.value, self.wset, "WSet_SF")?),
                            (
                                "WSetRvrt",
                                scaled("WSetRvrt", revert, self.wset, "WSet_SF")?,
                            ),
                        ],
                    )?,
                    write(
                        self.addr,
                        &[("WSetEnaRvrt", ena_rvrt), ("WSetRvrtTms", secs)],
                    )?,
                ]
            }
            SetpointMode::WMaxPct => {
                check_range("WSetPct", cmd.value, -100.0, 100.0)?;
                check_range("WSetPctRvrt", revert, -100.0, 100.0)?;
                let sf = self.wset_pct;
                vec![
                    write(self.addr, &[("WSetMod", mode)])?,
                    write(
                        self.addr,
                        &[
                            ("WSetPct", scaled("WSetPct", cmd.value, sf, "WSetPct_SF")?),
                            (
                                "WSetPctRvrt",
                                scaled("WSetPctRvrt", revert, sf, "WSetPct_SF")?,
                            ),
                            ("WSetEnaRvrt", ena_rvrt),
                            ("WSetRvrtTms", secs),
                        ],
                    )?,
                ]
            }
        };
        writes.push(write(self.addr, &[("WSetEna", vec![1])])?);
        Ok(writes)
    }

    /// The write that disables the active power setpoint (`WSetEna` = 0).
    pub fn setpoint_disable(&self) -> Result<Vec<RegisterWrite>, EncodeError> {
        Ok(vec![write(self.addr, &[("WSetEna", vec![0])])?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCALES: DerCtlScales = DerCtlScales {
        addr: 40100,
        wmax_lim_pct: Some(-2),
        wset: Some(1),
        wset_pct: Some(-1),
    };

    #[test]
    fn power_limit_writes_values_then_enable() {
        let writes = SCALES
            .power_limit(&PowerLimit {
                pct: 42.5,
                revert_after: Duration::from_millis(90_900),
                revert_to_pct: Some(0.0),
            })
            .unwrap();
        // WMaxLimPct is at offset 15, WMaxLimPctEna at 14 (model_704.json).
        assert_eq!(
            writes,
            vec![
                RegisterWrite {
                    addr: 40115,
                    values: vec![4250, 0, 1, 0, 90]
                },
                RegisterWrite {
                    addr: 40114,
                    values: vec![1]
                },
            ]
        );
        let writes = SCALES
            .power_limit(&PowerLimit {
                pct: 100.0,
                revert_after: Duration::from_secs(70_000),
                revert_to_pct: None,
            })
            .unwrap();
        assert_eq!(writes[0].values, vec![10000, 10000, 0, 1, 4464]);
    }

    #[test]
    fn power_limit_range_checks() {
        let cmd = |pct, secs| PowerLimit {
            pct,
            revert_after: Duration::from_secs(secs),
            revert_to_pct: None,
        };
        assert!(matches!(
            SCALES.power_limit(&cmd(100.5, 10)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(SCALES.power_limit(&cmd(-1.0, 10)).is_err());
        assert!(matches!(
            SCALES.power_limit(&cmd(f64::NAN, 10)),
            Err(EncodeError::NotFinite { .. })
        ));
        assert!(SCALES.power_limit(&cmd(50.0, 0)).is_err());
        assert!(SCALES.power_limit(&cmd(50.0, u64::from(u32::MAX))).is_err());
        // With WMaxLimPct_SF = 3, 100 % is raw 0.1: rounds to 0, fine; but with -3, 100 % is
        // raw 100000: past uint16.
        let tight = DerCtlScales {
            wmax_lim_pct: Some(-3),
            ..SCALES
        };
        assert!(matches!(
            tight.power_limit(&cmd(100.0, 10)),
            Err(EncodeError::OutOfRange { .. })
        ));
        let none = DerCtlScales {
            wmax_lim_pct: None,
            ..SCALES
        };
        assert!(matches!(
            none.power_limit(&cmd(50.0, 10)),
            Err(EncodeError::Scale { .. })
        ));
        // The model's registers past 65535.
        let high = DerCtlScales {
            addr: 65530,
            ..SCALES
        };
        assert!(matches!(
            high.power_limit(&cmd(50.0, 10)),
            Err(EncodeError::Invalid { .. })
        ));
    }

    #[test]
    fn setpoint_in_watts_and_percent() {
        let writes = SCALES
            .setpoint(&ActivePowerSetpoint {
                mode: SetpointMode::Watts,
                value: -15_000.0,
                revert_after: Duration::from_secs(30),
                revert_to: Some(0.0),
            })
            .unwrap();
        let minus_1500 = (-1500i32) as u32;
        assert_eq!(
            writes,
            vec![
                // WSetMod at 23, WSet 24-25, WSetRvrt 26-27.
                RegisterWrite {
                    addr: 40123,
                    values: vec![1, (minus_1500 >> 16) as u16, minus_1500 as u16, 0, 0],
                },
                // WSetEnaRvrt at 30, WSetRvrtTms 31-32.
                RegisterWrite {
                    addr: 40130,
                    values: vec![1, 0, 30]
                },
                // WSetEna at 22.
                RegisterWrite {
                    addr: 40122,
                    values: vec![1]
                },
            ]
        );
        let writes = SCALES
            .setpoint(&ActivePowerSetpoint {
                mode: SetpointMode::WMaxPct,
                value: -55.5,
                revert_after: Duration::from_secs(5),
                revert_to: None,
            })
            .unwrap();
        assert_eq!(
            writes,
            vec![
                RegisterWrite {
                    addr: 40123,
                    values: vec![0]
                },
                // WSetPct 28, WSetPctRvrt 29, WSetEnaRvrt 30, WSetRvrtTms 31-32.
                RegisterWrite {
                    addr: 40128,
                    values: vec![(-555i16) as u16, (-555i16) as u16, 0, 0, 5],
                },
                RegisterWrite {
                    addr: 40122,
                    values: vec![1]
                },
            ]
        );
        assert!(SCALES
            .setpoint(&ActivePowerSetpoint {
                mode: SetpointMode::WMaxPct,
                value: 100.1,
                revert_after: Duration::from_secs(5),
                revert_to: None,
            })
            .is_err());
        assert!(SCALES
            .setpoint(&ActivePowerSetpoint {
                mode: SetpointMode::Watts,
                value: 1e12,
                revert_after: Duration::from_secs(5),
                revert_to: None,
            })
            .is_err());
        assert_eq!(
            SCALES.setpoint_disable().unwrap(),
            vec![RegisterWrite {
                addr: 40122,
                values: vec![0]
            }]
        );
        assert_eq!(
            SCALES.power_limit_disable().unwrap(),
            vec![RegisterWrite {
                addr: 40114,
                values: vec![0]
            }]
        );
    }
}
