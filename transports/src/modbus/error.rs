//! The typed errors of the Modbus client, the register decoders and the SunSpec walk.
//!
//! - [`ModbusError`]: what a request to a device ended with when it did not succeed (a time-out,
//!   an IO error, a Modbus exception from the device, back-off, a full queue, …).
//! - [`DecodeError`]: registers that cannot be turned into values (too few, a scale factor out
//!   of range, a value outside its range, a SunSpec map that does not walk).
//! - [`EncodeError`]: a value that cannot be turned into registers (out of range, not finite,
//!   read-only).
//!
//! None of the decoders or encoders panics: every bad input ends in one of these.

use std::{fmt, io, net::SocketAddr, time::Duration};

/// A Modbus exception code: the byte a device answers with when it refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExceptionCode {
    /// 0x01: the function code is not supported.
    IllegalFunction,
    /// 0x02: the address (or address + count) is not valid on the device.
    IllegalDataAddress,
    /// 0x03: a value in the request is not acceptable.
    IllegalDataValue,
    /// 0x04: the device failed while performing the request.
    ServerDeviceFailure,
    /// 0x05: accepted, the device needs more time.
    Acknowledge,
    /// 0x06: the device is busy with a long-running command.
    ServerDeviceBusy,
    /// 0x08: memory parity error.
    MemoryParityError,
    /// 0x0A: a gateway could not route the request.
    GatewayPathUnavailable,
    /// 0x0B: the device behind a gateway did not answer.
    GatewayTargetDeviceFailedToRespond,
    /// Any other code.
    Other(u8),
}

impl ExceptionCode {
    /// The exception code of a byte.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::IllegalFunction,
            0x02 => Self::IllegalDataAddress,
            0x03 => Self::IllegalDataValue,
            0x04 => Self::ServerDeviceFailure,
            0x05 => Self::Acknowledge,
            0x06 => Self::ServerDeviceBusy,
            0x08 => Self::MemoryParityError,
            0x0A => Self::GatewayPathUnavailable,
            0x0B => Self::GatewayTargetDeviceFailedToRespond,
            other => Self::Other(other),
        }
    }

    /// The byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::IllegalFunction => 0x01,
            Self::IllegalDataAddress => 0x02,
            Self::IllegalDataValue => 0x03,
            Self::ServerDeviceFailure => 0x04,
            Self::Acknowledge => 0x05,
            Self::ServerDeviceBusy => 0x06,
            Self::MemoryParityError => 0x08,
            Self::GatewayPathUnavailable => 0x0A,
            Self::GatewayTargetDeviceFailedToRespond => 0x0B,
            Self::Other(code) => code,
        }
    }
}

impl From<tokio_modbus::ExceptionCode> for ExceptionCode {
    fn from(code: tokio_modbus::ExceptionCode) -> Self {
        Self::from_code(code.into())
    }
}

impl fmt::Display for ExceptionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::IllegalFunction => "illegal function",
            Self::IllegalDataAddress => "illegal data address",
            Self::IllegalDataValue => "illegal data value",
            Self::ServerDeviceFailure => "server device failure",
            Self::Acknowledge => "acknowledge",
            Self::ServerDeviceBusy => "server device busy",
            Self::MemoryParityError => "memory parity error",
            Self::GatewayPathUnavailable => "gateway path unavailable",
            Self::GatewayTargetDeviceFailedToRespond => "gateway target device failed to respond",
            Self::Other(_) => "unknown exception",
        };
        write!(f, "{name} ({:#04x})", self.code())
    }
}

/// What a request was doing: named in every [`ModbusError`] so that a log line says which
/// request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Opening the TCP connection.
    Connect,
    /// Read holding registers (0x03).
    ReadHoldingRegisters {
        /// First register address.
        addr: u16,
        /// Number of registers.
        count: u16,
    },
    /// Read input registers (0x04).
    ReadInputRegisters {
        /// First register address.
        addr: u16,
        /// Number of registers.
        count: u16,
    },
    /// Write single register (0x06).
    WriteSingleRegister {
        /// Register address.
        addr: u16,
    },
    /// Write multiple registers (0x10).
    WriteMultipleRegisters {
        /// First register address.
        addr: u16,
        /// Number of registers.
        count: u16,
    },
    /// Read coils (0x01).
    ReadCoils {
        /// First coil address.
        addr: u16,
        /// Number of coils.
        count: u16,
    },
    /// Write single coil (0x05).
    WriteSingleCoil {
        /// Coil address.
        addr: u16,
    },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Connect => write!(f, "connect"),
            Self::ReadHoldingRegisters { addr, count } => {
                write!(f, "read {count} holding registers at {addr}")
            }
            Self::ReadInputRegisters { addr, count } => {
                write!(f, "read {count} input registers at {addr}")
            }
            Self::WriteSingleRegister { addr } => write!(f, "write register {addr}"),
            Self::WriteMultipleRegisters { addr, count } => {
                write!(f, "write {count} registers at {addr}")
            }
            Self::ReadCoils { addr, count } => write!(f, "read {count} coils at {addr}"),
            Self::WriteSingleCoil { addr } => write!(f, "write coil {addr}"),
        }
    }
}

/// Why a request to a device did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// No answer (or no connection) within the configured time; the connection was dropped.
    #[error("{addr}: {op}: no answer within {after:?}")]
    Timeout {
        /// The device.
        addr: SocketAddr,
        /// What timed out.
        op: Operation,
        /// The time-out that expired.
        after: Duration,
    },
    /// The socket failed (refused, reset, closed by the peer, …); the connection was dropped.
    #[error("{addr}: {op}: {source}")]
    Io {
        /// The device.
        addr: SocketAddr,
        /// What failed.
        op: Operation,
        /// The socket's error.
        #[source]
        source: io::Error,
    },
    /// The device answered with a Modbus exception. The connection stays up.
    #[error("{addr}: {op}: the device answered {code} to function {function:#04x}")]
    Exception {
        /// The device.
        addr: SocketAddr,
        /// The refused request.
        op: Operation,
        /// The function code of the request.
        function: u8,
        /// The exception code of the answer.
        code: ExceptionCode,
    },
    /// The device answered something that does not fit the request (another transaction,
    /// another function, a wrong count, garbage); the connection was dropped.
    #[error("{addr}: {op}: protocol error: {detail}")]
    Protocol {
        /// The device.
        addr: SocketAddr,
        /// The request.
        op: Operation,
        /// What did not fit.
        detail: String,
    },
    /// The client is disconnected and waits before it connects again; this request was not
    /// sent. Requests made after `retry_in` try to connect.
    #[error(
        "{addr}: disconnected after {failures} failure(s), next connection attempt in {retry_in:?}"
    )]
    Backoff {
        /// The device.
        addr: SocketAddr,
        /// Time until the next connection attempt is allowed.
        retry_in: Duration,
        /// Failures in a row so far.
        failures: u32,
    },
    /// The client was closed with [`ModbusClient::close`](super::client::ModbusClient::close).
    #[error("{addr}: the client is closed")]
    Disconnected {
        /// The device.
        addr: SocketAddr,
    },
    /// As many requests as allowed are already in flight or queued for this device.
    #[error("{addr}: {max_in_flight} requests already in flight")]
    Busy {
        /// The device.
        addr: SocketAddr,
        /// The configured limit.
        max_in_flight: usize,
    },
    /// The request cannot be sent as asked (count 0 or over the protocol's limit, addresses
    /// past 65535); nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The registers were read but do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The value to write does not encode.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl ModbusError {
    /// The exception code when the device answered with one.
    pub fn exception_code(&self) -> Option<ExceptionCode> {
        match self {
            Self::Exception { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the same request may succeed later without any change (time-out, IO, back-off,
    /// busy, a busy device): the rest are answers that will not change by themselves.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::Io { .. }
            | Self::Protocol { .. }
            | Self::Backoff { .. }
            | Self::Busy { .. } => true,
            Self::Exception { code, .. } => matches!(
                code,
                ExceptionCode::ServerDeviceBusy
                    | ExceptionCode::Acknowledge
                    | ExceptionCode::GatewayPathUnavailable
                    | ExceptionCode::GatewayTargetDeviceFailedToRespond
            ),
            Self::Disconnected { .. }
            | Self::InvalidRequest(_)
            | Self::Decode(_)
            | Self::Encode(_) => false,
        }
    }
}

/// Registers that do not decode into values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer registers than the value or block needs.
    #[error("{what}: needs {need} registers, got {got}")]
    TooShort {
        /// What was being decoded.
        what: String,
        /// Registers needed.
        need: usize,
        /// Registers given.
        got: usize,
    },
    /// A SunSpec scale factor outside -10..=10.
    #[error("{point}: scale factor {sf} = {value} is outside -10..=10")]
    ScaleFactorOutOfRange {
        /// The scaled point.
        point: String,
        /// The scale factor point.
        sf: String,
        /// Its value.
        value: i16,
    },
    /// A point has a value but its scale factor is "not implemented".
    #[error("{point} has a value but its scale factor {sf} is not implemented")]
    MissingScaleFactor {
        /// The scaled point.
        point: String,
        /// The scale factor point.
        sf: String,
    },
    /// A value outside the range its point allows (an enum value with no meaning, a reading
    /// outside the configured min/max).
    #[error("{point}: {value} is out of range ({expected})")]
    OutOfRange {
        /// The point.
        point: String,
        /// The value as read.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A point of another type was asked for (a table or profile error, not a device one).
    #[error("{point}: is a {actual}, not a {asked}")]
    WrongType {
        /// The point.
        point: String,
        /// Its type.
        actual: String,
        /// The type asked for.
        asked: String,
    },
    /// A point name that the model or profile does not have.
    #[error("{model}: no point {point}")]
    UnknownPoint {
        /// The model or profile.
        model: String,
        /// The point name.
        point: String,
    },
    /// No "SunS" marker at any of the probed base addresses.
    #[error("no SunSpec marker \"SunS\" at any of {bases:?}")]
    NotSunSpec {
        /// The probed base addresses.
        bases: Vec<u16>,
    },
    /// A model header that cannot start a model (id 0).
    #[error("SunSpec walk: invalid model id {id} at {addr}")]
    InvalidModelId {
        /// The id read.
        id: u16,
        /// Its register address.
        addr: u32,
    },
    /// A model whose length takes the walk past register 65535 (or past the end of the
    /// register image being walked): the map is corrupt or the walk has looped.
    #[error("SunSpec walk: model {id} at {addr} with length {len} runs past {limit}")]
    WalkPastEnd {
        /// The model id.
        id: u16,
        /// Its register address.
        addr: u32,
        /// Its length (L).
        len: u16,
        /// The last register address available.
        limit: u32,
    },
    /// More models than a SunSpec map plausibly has.
    #[error("SunSpec walk: more than {max} models")]
    TooManyModels {
        /// The limit.
        max: usize,
    },
    /// A model shorter than the points this crate reads from it.
    #[error("model {id}: length {len} is shorter than the {need} registers needed")]
    ModelTooShort {
        /// The model id.
        id: u16,
        /// Its length (L).
        len: u16,
        /// The length needed.
        need: u16,
    },
    /// A block of another model than the decoder's.
    #[error("expected model {expected}, found model {found}")]
    WrongModel {
        /// What the decoder decodes.
        expected: String,
        /// The block's model id.
        found: u16,
    },
    /// The model is not in the device's SunSpec map.
    #[error("model {0} is not in the device's SunSpec map")]
    ModelMissing(String),
}

/// Values that do not encode into registers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// A value outside the range of its point (or of the register type after scaling).
    #[error("{point}: {value} is outside {min}..={max}")]
    OutOfRange {
        /// The point.
        point: String,
        /// The value asked for.
        value: f64,
        /// Smallest allowed.
        min: f64,
        /// Largest allowed.
        max: f64,
    },
    /// NaN or an infinity.
    #[error("{point}: {value} is not a finite number")]
    NotFinite {
        /// The point.
        point: String,
        /// The value asked for.
        value: f64,
    },
    /// The point cannot be written.
    #[error("{point}: is read-only")]
    ReadOnly {
        /// The point.
        point: String,
    },
    /// The point's scale factor is not implemented or out of range, so no raw value can be
    /// computed.
    #[error("{point}: cannot be scaled: {detail}")]
    Scale {
        /// The point.
        point: String,
        /// Why.
        detail: String,
    },
    /// Anything else that makes the value unencodable (a string too long, a wrong type).
    #[error("{point}: {detail}")]
    Invalid {
        /// The point.
        point: String,
        /// Why.
        detail: String,
    },
}
