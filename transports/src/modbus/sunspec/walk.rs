//! The SunSpec map: the "SunS" marker at a base address, then models as (id, length)
//! headers one after the other, up to the end marker 0xFFFF.
//!
//! [`ModelWalk`] is the walk as a state machine, fed one header at a time (by the async walk
//! over a device, or by [`walk_image`] over registers in memory), so that both share every
//! check: a model id 0 is an error, a length that takes the walk past register 65535 (the
//! only way a walk of strictly increasing addresses could loop) is an error, and so are more
//! than [`MAX_MODELS`] models.

use crate::modbus::error::DecodeError;

/// "SunS" as two registers.
pub const SUNS: [u16; 2] = [0x5375, 0x6e53];
/// The base addresses where SunSpec says to look for the marker, in order.
pub const BASE_ADDRESSES: [u16; 3] = [40000, 0, 50000];
/// The model id that ends the map.
pub const END_MODEL_ID: u16 = 0xFFFF;
/// More models than this in one map is an error (a real device has a few dozen at most).
pub const MAX_MODELS: usize = 256;

/// Whether two registers are the "SunS" marker.
pub fn is_marker(regs: &[u16]) -> bool {
    regs.get(..2) == Some(&SUNS[..])
}

/// One model in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelHeader {
    /// The model id.
    pub id: u16,
    /// The register address of its `ID`.
    pub addr: u16,
    /// Its length `L` (registers after `ID` and `L`).
    pub len: u16,
}

impl ModelHeader {
    /// One past its last register.
    pub fn end(&self) -> u32 {
        u32::from(self.addr) + 2 + u32::from(self.len)
    }
}

/// A device's SunSpec map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SunSpecMap {
    /// Where "SunS" is.
    pub base: u16,
    /// The models in register order.
    pub models: Vec<ModelHeader>,
    /// Whether the map ended with the end marker (some devices end it by refusing to read
    /// past their last model instead).
    pub end_marker: bool,
}

impl SunSpecMap {
    /// The first model with this id.
    pub fn find(&self, id: u16) -> Option<&ModelHeader> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The first model whose id is one of `ids`, in map order.
    pub fn find_any(&self, ids: &[u16]) -> Option<&ModelHeader> {
        self.models.iter().find(|m| ids.contains(&m.id))
    }
}

/// A walk in progress.
#[derive(Debug, Clone)]
pub struct ModelWalk {
    base: u16,
    next: u32,
    models: Vec<ModelHeader>,
    done: bool,
    end_marker: bool,
}

impl ModelWalk {
    /// A walk of the map whose "SunS" marker is at `base`.
    pub fn new(base: u16) -> Self {
        let next = u32::from(base) + 2;
        Self {
            base,
            next,
            models: Vec::new(),
            // A marker in the last two registers leaves no room for a header.
            done: next > 0xFFFF,
            end_marker: false,
        }
    }

    /// The register address of the next header to read, `None` when the walk is over.
    pub fn next_addr(&self) -> Option<u16> {
        if self.done {
            None
        } else {
            u16::try_from(self.next).ok()
        }
    }

    /// Feeds the next header's id. Returns `true` when it is the end marker (the walk is
    /// then over and needs no length).
    pub fn is_end(&mut self, id: u16) -> bool {
        if id == END_MODEL_ID && !self.done {
            self.done = true;
            self.end_marker = true;
        }
        self.done
    }

    /// Feeds the next header (its id must not be the end marker: see
    /// [`ModelWalk::is_end`]). Returns the model found.
    pub fn push(&mut self, id: u16, len: u16) -> Result<ModelHeader, DecodeError> {
        let Some(addr) = self.next_addr() else {
            return Err(DecodeError::TooManyModels {
                max: self.models.len(),
            });
        };
        if id == 0 || id == END_MODEL_ID {
            return Err(DecodeError::InvalidModelId {
                id,
                addr: self.next,
            });
        }
        if self.models.len() >= MAX_MODELS {
            return Err(DecodeError::TooManyModels { max: MAX_MODELS });
        }
        let header = ModelHeader { id, addr, len };
        if header.end() > 0x1_0000 {
            return Err(DecodeError::WalkPastEnd {
                id,
                addr: self.next,
                len,
                limit: 0xFFFF,
            });
        }
        self.models.push(header);
        self.next = header.end();
        // A model that ends at the last register leaves no room for the end marker.
        self.done = self.next > 0xFFFF;
        Ok(header)
    }

    /// Ends the walk without an end marker (the device refused to read the next header).
    pub fn finish(mut self) -> SunSpecMap {
        self.done = true;
        self.into_map()
    }

    /// The map walked so far.
    pub fn into_map(self) -> SunSpecMap {
        SunSpecMap {
            base: self.base,
            models: self.models,
            end_marker: self.end_marker,
        }
    }
}

/// Walks a SunSpec map held in memory: `regs[0]` is register `base`, where "SunS" must be.
/// The map may end with the end marker, or exactly at the end of `regs` (as a device that
/// refuses to read past its last model); a model that runs past the end of `regs` is an
/// error. Never panics, whatever `regs` holds.
pub fn walk_image(base: u16, regs: &[u16]) -> Result<SunSpecMap, DecodeError> {
    if !is_marker(regs) {
        return Err(DecodeError::NotSunSpec { bases: vec![base] });
    }
    let image_end = u32::from(base) + regs.len() as u32;
    let mut walk = ModelWalk::new(base);
    while let Some(addr) = walk.next_addr() {
        let index = (u32::from(addr) - u32::from(base)) as usize;
        let Some(&id) = regs.get(index) else {
            return Ok(walk.finish());
        };
        if walk.is_end(id) {
            break;
        }
        let Some(&len) = regs.get(index + 1) else {
            return Err(DecodeError::TooShort {
                what: format!("SunSpec model {id} header at {addr}"),
                need: index + 2,
                got: regs.len(),
            });
        };
        let header = walk.push(id, len)?;
        if header.end() > image_end {
            return Err(DecodeError::WalkPastEnd {
                id,
                addr: u32::from(addr),
                len,
                limit: image_end.saturating_sub(1),
            });
        }
    }
    Ok(walk.into_map())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(models: &[(u16, u16)], end: bool) -> Vec<u16> {
        let mut v = SUNS.to_vec();
        for &(id, len) in models {
            v.push(id);
            v.push(len);
            v.extend(std::iter::repeat_n(0, usize::from(len)));
        }
        if end {
            v.extend([END_MODEL_ID, 0]);
        }
        v
    }

    #[test]
    fn walks_models_to_the_end_marker() {
        let regs = image(&[(1, 66), (701, 153), (713, 7)], true);
        let map = walk_image(40000, &regs).unwrap();
        assert!(map.end_marker);
        assert_eq!(
            map.models,
            vec![
                ModelHeader {
                    id: 1,
                    addr: 40002,
                    len: 66
                },
                ModelHeader {
                    id: 701,
                    addr: 40070,
                    len: 153
                },
                ModelHeader {
                    id: 713,
                    addr: 40225,
                    len: 7
                },
            ]
        );
        assert_eq!(map.find(713).unwrap().addr, 40225);
        assert_eq!(map.find_any(&[201, 701]).unwrap().id, 701);
    }

    #[test]
    fn a_map_may_end_at_the_end_of_the_registers() {
        let regs = image(&[(1, 66)], false);
        let map = walk_image(0, &regs).unwrap();
        assert!(!map.end_marker);
        assert_eq!(map.models.len(), 1);
        // The end marker alone, without its length, is fine too.
        let mut regs = image(&[(1, 66)], false);
        regs.push(END_MODEL_ID);
        assert!(walk_image(0, &regs).unwrap().end_marker);
    }

    #[test]
    fn bad_maps_are_errors() {
        assert!(matches!(
            walk_image(0, &[1, 2]),
            Err(DecodeError::NotSunSpec { .. })
        ));
        assert!(matches!(
            walk_image(0, &[0x5375]),
            Err(DecodeError::NotSunSpec { .. })
        ));
        // A length past the registers held.
        let mut regs = image(&[(1, 66)], false);
        regs.truncate(40);
        assert!(matches!(
            walk_image(0, &regs),
            Err(DecodeError::WalkPastEnd { .. })
        ));
        // Model id 0.
        let regs = image(&[(0, 2)], true);
        assert!(matches!(
            walk_image(0, &regs),
            Err(DecodeError::InvalidModelId { id: 0, .. })
        ));
        // A header without its length.
        let mut regs = image(&[(1, 2)], false);
        regs.push(701);
        assert!(matches!(
            walk_image(0, &regs),
            Err(DecodeError::TooShort { .. })
        ));
    }

    #[test]
    fn a_walk_never_passes_register_65535() {
        let mut walk = ModelWalk::new(65000);
        assert_eq!(walk.next_addr(), Some(65002));
        assert!(matches!(
            walk.push(1, 600),
            Err(DecodeError::WalkPastEnd {
                id: 1,
                addr: 65002,
                len: 600,
                ..
            })
        ));
        // Exactly to the end is fine, and ends the walk.
        let header = walk.push(1, 65535 - 65004 + 1).unwrap();
        assert_eq!(header.end(), 0x1_0000);
        assert_eq!(walk.next_addr(), None);
        assert!(walk.push(1, 0).is_err());
        // A marker in the last two registers.
        assert_eq!(ModelWalk::new(65534).next_addr(), None);
    }

    #[test]
    fn too_many_models() {
        let models: Vec<(u16, u16)> = (0..=MAX_MODELS as u16).map(|i| (i + 1, 0)).collect();
        let regs = image(&models, true);
        assert_eq!(
            walk_image(0, &regs).unwrap_err(),
            DecodeError::TooManyModels { max: MAX_MODELS }
        );
    }
}
