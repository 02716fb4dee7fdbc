//! Values of one or more 16-bit registers: 32- and 64-bit integers and floats in either word
//! order, and the writes that put values into a device.
//!
//! Modbus registers are big-endian 16-bit words; a 32-bit value spans two of them, high word
//! first in SunSpec and in most devices ([`WordOrder::HighFirst`], "ABCD"), low word first in
//! some ([`WordOrder::LowFirst`], "CDAB").

use serde::Deserialize;

use super::error::DecodeError;

/// The order of the 16-bit words of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// The high word in the first register ("ABCD", SunSpec's order).
    #[default]
    HighFirst,
    /// The low word in the first register ("CDAB").
    LowFirst,
}

/// A write of consecutive holding registers starting at `addr`: one register is written with
/// function 0x06, more with 0x10.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterWrite {
    /// The first register address.
    pub addr: u16,
    /// The values, one per register.
    pub values: Vec<u16>,
}

/// Takes `n` registers at `offset`, or says which registers are missing.
pub fn take<'a>(
    regs: &'a [u16],
    offset: usize,
    n: usize,
    what: &str,
) -> Result<&'a [u16], DecodeError> {
    offset
        .checked_add(n)
        .and_then(|end| regs.get(offset..end))
        .ok_or_else(|| DecodeError::TooShort {
            what: what.to_owned(),
            need: offset.saturating_add(n),
            got: regs.len(),
        })
}

/// A 32-bit unsigned value of two registers.
pub fn u32_from(words: [u16; 2], order: WordOrder) -> u32 {
    let (hi, lo) = match order {
        WordOrder::HighFirst => (words[0], words[1]),
        WordOrder::LowFirst => (words[1], words[0]),
    };
    (u32::from(hi) << 16) | u32::from(lo)
}

/// The two registers of a 32-bit unsigned value.
pub fn u32_to(value: u32, order: WordOrder) -> [u16; 2] {
    let hi = (value >> 16) as u16;
    let lo = value as u16;
    match order {
        WordOrder::HighFirst => [hi, lo],
        WordOrder::LowFirst => [lo, hi],
    }
}

/// A 64-bit unsigned value of four registers, most significant word first (SunSpec's order).
pub fn u64_from(words: [u16; 4]) -> u64 {
    words
        .iter()
        .fold(0u64, |acc, &w| (acc << 16) | u64::from(w))
}

/// The four registers of a 64-bit unsigned value, most significant word first.
pub fn u64_to(value: u64) -> [u16; 4] {
    [
        (value >> 48) as u16,
        (value >> 32) as u16,
        (value >> 16) as u16,
        value as u16,
    ]
}

/// Registers of 2 bytes each into bytes, big-endian (how Modbus carries strings).
pub fn bytes_of(regs: &[u16]) -> Vec<u8> {
    regs.iter().flat_map(|r| r.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_orders() {
        assert_eq!(
            u32_from([0x1234, 0x5678], WordOrder::HighFirst),
            0x1234_5678
        );
        assert_eq!(u32_from([0x5678, 0x1234], WordOrder::LowFirst), 0x1234_5678);
        assert_eq!(u32_to(0x1234_5678, WordOrder::HighFirst), [0x1234, 0x5678]);
        assert_eq!(u32_to(0x1234_5678, WordOrder::LowFirst), [0x5678, 0x1234]);
        assert_eq!(u64_from([1, 2, 3, 4]), 0x0001_0002_0003_0004);
        assert_eq!(u64_to(0x0001_0002_0003_0004), [1, 2, 3, 4]);
    }

    #[test]
    fn take_names_what_is_missing() {
        let regs = [1, 2, 3];
        assert_eq!(take(&regs, 1, 2, "x").unwrap(), &[2, 3]);
        let err = take(&regs, 2, 2, "W").unwrap_err();
        assert_eq!(err.to_string(), "W: needs 4 registers, got 3");
        assert!(take(&regs, usize::MAX, 2, "x").is_err());
    }
}
