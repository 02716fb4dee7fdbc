//! [`SunSpecDevice`]: discovery and model walk over a [`ModbusClient`], and the typed reads
//! and control writes on top.

use super::block::ModelBlock;
use super::control::{ActivePowerSetpoint, PowerLimit};
use super::models::{
    AcMeasurement, AcMeter, Common, DerControls, MeterReading, StorageCapacity, METER_MODELS,
};
use super::point::ModelDef;
use super::walk::{is_marker, ModelHeader, ModelWalk, SunSpecMap, BASE_ADDRESSES};
use crate::modbus::client::ModbusClient;
use crate::modbus::error::{DecodeError, ExceptionCode, ModbusError};
use crate::modbus::regs::RegisterWrite;

fn refused(e: &ModbusError) -> bool {
    e.exception_code() == Some(ExceptionCode::IllegalDataAddress)
}

/// A device with a SunSpec map.
#[derive(Debug, Clone)]
pub struct SunSpecDevice {
    client: ModbusClient,
    map: SunSpecMap,
}

impl SunSpecDevice {
    /// Finds "SunS" at 40000, then 0, then 50000, and walks the models.
    pub async fn discover(client: ModbusClient) -> Result<Self, ModbusError> {
        Self::discover_at(client, &BASE_ADDRESSES).await
    }

    /// Finds "SunS" at the first of `bases` that has it, and walks the models.
    ///
    /// A base that the device refuses (a Modbus exception) or that holds something else is
    /// skipped. So is one that times out (some devices do not answer for addresses they do not
    /// have): the probe then waits out the client's back-off before the next base. Any other
    /// failure (the device is unreachable) ends the discovery.
    pub async fn discover_at(client: ModbusClient, bases: &[u16]) -> Result<Self, ModbusError> {
        let mut base = None;
        for &b in bases {
            match client.read_holding_registers(b, 2).await {
                Ok(regs) if is_marker(&regs) => {
                    base = Some(b);
                    break;
                }
                Ok(_)
                | Err(ModbusError::Exception { .. })
                | Err(ModbusError::InvalidRequest(_)) => {}
                Err(ModbusError::Timeout { .. }) => client.wait_backoff().await,
                Err(e) => return Err(e),
            }
        }
        let base = base.ok_or_else(|| DecodeError::NotSunSpec {
            bases: bases.to_vec(),
        })?;
        let map = walk(&client, base).await?;
        tracing::debug!(addr = %client.addr(), base, models = ?map.models.iter().map(|m| m.id).collect::<Vec<_>>(), "sunspec: discovered");
        Ok(Self { client, map })
    }

    /// A device whose map is already known (from an earlier discovery).
    pub fn with_map(client: ModbusClient, map: SunSpecMap) -> Self {
        Self { client, map }
    }

    /// The client.
    pub fn client(&self) -> &ModbusClient {
        &self.client
    }

    /// The map.
    pub fn map(&self) -> &SunSpecMap {
        &self.map
    }

    /// Reads a model's block: for a model with a table, the registers the table knows (the
    /// device may announce more), else the whole model.
    pub async fn read_block(&self, header: &ModelHeader) -> Result<ModelBlock, ModbusError> {
        let len = match ModelDef::by_id(header.id) {
            Some(def) => header.len.min(def.len),
            None => header.len,
        };
        let mut regs = self
            .client
            .read_holding_range(header.addr, usize::from(len) + 2)
            .await?;
        if regs.first() != Some(&header.id) {
            return Err(DecodeError::WrongModel {
                expected: format!("{} at {} (the map has changed?)", header.id, header.addr),
                found: regs.first().copied().unwrap_or_default(),
            }
            .into());
        }
        // Keep the announced length in the block even if fewer registers were read.
        if let Some(l) = regs.get_mut(1) {
            *l = (*l).min(len);
        }
        Ok(ModelBlock::new(header.addr, regs)?)
    }

    /// Reads the first model with this id.
    pub async fn read_model(&self, id: u16) -> Result<ModelBlock, ModbusError> {
        let header = *self
            .map
            .find(id)
            .ok_or_else(|| DecodeError::ModelMissing(id.to_string()))?;
        self.read_block(&header).await
    }

    /// Model 1.
    pub async fn common(&self) -> Result<Common, ModbusError> {
        Ok(Common::decode(&self.read_model(1).await?)?)
    }

    /// Model 701.
    pub async fn ac_measurement(&self) -> Result<AcMeasurement, ModbusError> {
        Ok(AcMeasurement::decode(&self.read_model(701).await?)?)
    }

    /// Model 704.
    pub async fn der_controls(&self) -> Result<DerControls, ModbusError> {
        Ok(DerControls::decode(&self.read_model(704).await?)?)
    }

    /// Model 713.
    pub async fn storage(&self) -> Result<StorageCapacity, ModbusError> {
        Ok(StorageCapacity::decode(&self.read_model(713).await?)?)
    }

    /// The meter: the first of models 201–204, else model 701.
    pub async fn meter(&self) -> Result<MeterReading, ModbusError> {
        if let Some(h) = self.map.find_any(&METER_MODELS) {
            let header = *h;
            return Ok(MeterReading::Meter(Box::new(AcMeter::decode(
                &self.read_block(&header).await?,
            )?)));
        }
        if self.map.find(701).is_some() {
            return Ok(MeterReading::Der(Box::new(self.ac_measurement().await?)));
        }
        Err(DecodeError::ModelMissing("201..=204 or 701 (meter)".into()).into())
    }

    /// Writes in order, stopping at the first failure.
    pub async fn write(&self, writes: &[RegisterWrite]) -> Result<(), ModbusError> {
        self.client.write_all(writes).await
    }

    /// Sets the maximum active power limit (704), reading the model's scale factors first.
    pub async fn set_power_limit(&self, cmd: &PowerLimit) -> Result<(), ModbusError> {
        let ctl = self.der_controls().await?;
        self.write(&ctl.scales.power_limit(cmd)?).await
    }

    /// Sets the active power setpoint (704), reading the model's scale factors first.
    pub async fn set_active_power(&self, cmd: &ActivePowerSetpoint) -> Result<(), ModbusError> {
        let ctl = self.der_controls().await?;
        self.write(&ctl.scales.setpoint(cmd)?).await
    }
}

/// Walks the models of the map at `base` ("SunS" already seen there): one request per header
/// (`ID` and `L` together); a header the device refuses to read ends the map (some devices
/// have no end marker), when the device also refuses its `ID` alone.
pub async fn walk(client: &ModbusClient, base: u16) -> Result<SunSpecMap, ModbusError> {
    let mut walk = ModelWalk::new(base);
    while let Some(addr) = walk.next_addr() {
        let header = match client.read_holding_registers(addr, 2).await {
            Ok(regs) => Some((regs[0], regs[1])),
            Err(e) if refused(&e) || matches!(e, ModbusError::InvalidRequest(_)) => None,
            Err(e) => return Err(e),
        };
        match header {
            Some((id, len)) => {
                if !walk.is_end(id) {
                    walk.push(id, len)?;
                }
            }
            None => {
                // `ID` alone: the end marker may be the device's very last register.
                match client.read_holding_registers(addr, 1).await {
                    Ok(regs) if walk.is_end(regs[0]) => {}
                    Ok(regs) => {
                        return Err(DecodeError::TooShort {
                            what: format!("SunSpec model {} header at {addr}", regs[0]),
                            need: 2,
                            got: 1,
                        }
                        .into())
                    }
                    Err(e) if refused(&e) => return Ok(walk.finish()),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(walk.into_map())
}
