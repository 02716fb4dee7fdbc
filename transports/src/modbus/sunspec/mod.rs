//! SunSpec over Modbus: discovery ("SunS" at 40000, 0 or 50000), the model walk, typed
//! decoders of models 1, 701, 704, 713 and 201–204, encoders of the 704 controls, and a
//! builder of register images.
//!
//! The point offsets come from the official model definitions (the JSON files shipped in
//! pysunspec2), transcribed in [`tables`] and checked against them by a test.
//!
//! Decoding rules, for every model:
//! - SunSpec's "not implemented" values decode as `None`, never as a number: int16 0x8000,
//!   uint16/enum16/bitfield16/count 0xFFFF, int32 0x80000000, uint32/enum32/bitfield32
//!   0xFFFFFFFF, int64 0x8000000000000000, uint64 0xFFFFFFFFFFFFFFFF, accumulators 0, float32
//!   NaN, sunssf 0x8000, strings all zero.
//! - A scaled point is `raw × 10^sf`, its scale factor `sf` checked to be in -10..=10; a
//!   point with a value but a scale factor that is not implemented is an error.
//! - An enum value with no meaning, or a percentage outside 0..=100, is an error naming the
//!   point; so is a model shorter than the points read from it.
//!
//! ```
//! use gridvisor_transports::modbus::sunspec::{
//!     Common, ModelImage, StorageCapacity, SunSpecMapBuilder,
//! };
//!
//! let mut storage = ModelImage::of(713)?;
//! storage.set_sf("Pct_SF", -1)?.set_scaled("SoC", 87.5)?;
//! let common = Common { manufacturer: Some("gridvisor".into()), ..Common::default() };
//! let image = SunSpecMapBuilder::new(40000)
//!     .push(common.to_image()?)
//!     .push(storage)
//!     .build()?;
//! let map = image.walk()?;
//! let soc = StorageCapacity::decode(&image.block(map.find(713).unwrap())?)?.soc_pct;
//! assert_eq!(soc, Some(87.5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod block;
pub mod builder;
pub mod control;
pub mod device;
pub mod models;
pub mod point;
pub mod tables;
pub mod walk;

pub use block::ModelBlock;
pub use builder::{ModelImage, RegisterImage, SunSpecMapBuilder};
pub use control::{ActivePowerSetpoint, PowerLimit};
pub use device::SunSpecDevice;
pub use models::{
    AcMeasurement, AcMeter, AcType, Common, ConnectionState, DerControls, DerCtlScales,
    InverterState, MeterReading, OperatingState, PhaseMeasurement, PowerLimitState, SetpointMode,
    SetpointState, StorageCapacity, StorageStatus, Temperatures, METER_MODELS,
};
pub use point::{ModelDef, PointDef, PointType, Value};
pub use walk::{
    walk_image, ModelHeader, ModelWalk, SunSpecMap, BASE_ADDRESSES, END_MODEL_ID, MAX_MODELS, SUNS,
};
