//! [`Fault`]: how a simulated device misbehaves, switchable while it runs.
//!
//! | fault | what a client sees |
//! |---|---|
//! | `None` | a correct device |
//! | `Drop` | every open connection closed at once, new ones accepted and closed at once (an IO error, "closed by the device") |
//! | `Hang` | connections accepted and requests read, never an answer (a time-out) |
//! | `Exception(code)` | every request answered with that Modbus exception |
//! | `BadValue` | correct answers, except that one point reads a value of your choice (a decode error when it is out of range, e.g. a scale factor of 0x7FFF) |

use gridvisor_transports::modbus::{
    sunspec::{ModelDef, RegisterImage},
    ExceptionCode,
};

use super::SimError;

/// One point of the map that reads a chosen raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// The model (its first instance in the map).
    pub model: u16,
    /// The point's name in the model's table.
    pub point: String,
    /// The registers it reads instead (as many as the point has).
    pub raw: Vec<u16>,
}

impl BadValue {
    /// A scale factor point that reads 0x7FFF (32767: far outside -10..=10).
    pub fn scale_factor(model: u16, point: &str) -> Self {
        Self {
            model,
            point: point.to_owned(),
            raw: vec![0x7FFF],
        }
    }

    /// The registers this overrides in `image`: the point's address and its raw value; an
    /// error when the map has no such model or point, or `raw` has the wrong size.
    pub fn resolve(&self, image: &RegisterImage) -> Result<(u16, Vec<u16>), SimError> {
        let unknown = || SimError::UnknownPoint {
            model: self.model,
            point: self.point.clone(),
        };
        let map = image.walk().map_err(|_| unknown())?;
        let header = map.find(self.model).ok_or_else(unknown)?;
        let def = ModelDef::by_id(self.model).ok_or_else(unknown)?;
        let p = def.point(&self.point).ok_or_else(unknown)?;
        if self.raw.len() != usize::from(p.ty.size()) {
            return Err(SimError::Config {
                field: format!("bad value of {}.{}", self.model, self.point),
                detail: format!(
                    "the point has {} register(s), got {}",
                    p.ty.size(),
                    self.raw.len()
                ),
            });
        }
        let addr = header.addr.checked_add(p.offset).ok_or_else(unknown)?;
        Ok((addr, self.raw.clone()))
    }
}

/// How the device misbehaves (see the module's table).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Behaves.
    #[default]
    None,
    /// Closes every connection and refuses new ones (accepts and closes them).
    Drop,
    /// Accepts and reads, never answers.
    Hang,
    /// Answers every request with this exception.
    Exception(ExceptionCode),
    /// Serves a chosen value in one point.
    BadValue(BadValue),
}

/// Overwrites, in a read of `regs` at `addr`, the registers of the bad value that fall in it.
pub fn overlay(regs: &mut [u16], addr: u16, bad_addr: u16, bad: &[u16]) {
    for (i, v) in bad.iter().enumerate() {
        let at = usize::from(bad_addr) + i;
        if let Some(slot) = at
            .checked_sub(usize::from(addr))
            .and_then(|o| regs.get_mut(o))
        {
            *slot = *v;
        }
    }
}

/// tokio-modbus's exception code of ours.
pub fn to_wire(code: ExceptionCode) -> tokio_modbus::ExceptionCode {
    tokio_modbus::ExceptionCode::new(code.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_touches_only_the_overlap() {
        let mut regs = vec![0u16; 4];
        overlay(&mut regs, 100, 102, &[7, 8, 9]);
        assert_eq!(regs, vec![0, 0, 7, 8]);
        let mut regs = vec![0u16; 2];
        overlay(&mut regs, 100, 98, &[7, 8, 9]);
        assert_eq!(regs, vec![9, 0]);
        let mut regs = vec![0u16; 2];
        overlay(&mut regs, 100, 200, &[7]);
        assert_eq!(regs, vec![0, 0]);
    }

    #[test]
    fn exception_codes_keep_their_byte() {
        for b in [1u8, 2, 3, 4, 6, 0x0B, 0x42] {
            let ours = ExceptionCode::from_code(b);
            assert_eq!(u8::from(to_wire(ours)), b);
        }
    }
}
