//! IEEE 1588-2008 management messages as linuxptp's `pmc` and `ptp4l` exchange them over
//! ptp4l's Unix datagram socket: a GET request for one management id, and its answer.
//!
//! The layout follows linuxptp 3.1.1 (`msg.h`, `tlv.h`, `ddt.h`, `ds.h`); every field is
//! big-endian on the wire:
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..34 | the common header: messageType 0x0D (management), versionPTP 2, messageLength, domainNumber, flags, correction, sourcePortIdentity (8 + 2), sequenceId, control 4, logMessageInterval 0x7f |
//! | 34..48 | targetPortIdentity (all ones: every port), startingBoundaryHops, boundaryHops, actionField (low nibble: GET 0, RESPONSE 2, ACKNOWLEDGE 4), reserved |
//! | 48.. | one TLV: type (MANAGEMENT 0x0001 or MANAGEMENT_ERROR_STATUS 0x0002), length, then the management id and its data set (or the error id, the management id and 4 reserved bytes) |
//!
//! Decoding is strict, since a safety decision rests on it: the datagram must be exactly
//! `messageLength` long, a management message of version 2, an answer (RESPONSE or
//! ACKNOWLEDGE), and carry one TLV whose length is the data set's size. Anything else is a
//! [`DecodeError`] that names what was wrong; nothing here panics on any input (see the fuzz
//! target `transports/tests/ptp_codec_fuzz.rs`).

use std::fmt;

/// The common PTP header, bytes.
pub const HEADER_BYTES: usize = 34;
/// A management message up to its TLV: the header, targetPortIdentity, hops, action, reserved.
pub const MANAGEMENT_BYTES: usize = 48;
/// A management TLV's type, length and id.
pub const TLV_HEADER_BYTES: usize = 6;
/// A management error status TLV without its optional display text: type, length, error id,
/// management id, 4 reserved bytes.
pub const ERROR_TLV_BYTES: usize = 12;
/// The largest message accepted (linuxptp's `struct message_data`).
pub const MAX_MESSAGE_BYTES: usize = 1500;
/// messageType of a management message (low nibble of the first byte).
pub const MESSAGE_TYPE_MANAGEMENT: u8 = 0x0D;
/// versionPTP (low nibble of the second byte).
pub const PTP_VERSION: u8 = 2;
/// controlField of a management message.
pub const CONTROL_MANAGEMENT: u8 = 4;
/// TLV type of a management TLV.
pub const TLV_MANAGEMENT: u16 = 0x0001;
/// TLV type of a management error status TLV.
pub const TLV_MANAGEMENT_ERROR_STATUS: u16 = 0x0002;

/// The management ids this client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManagementId {
    /// CURRENT_DATA_SET (0x2001): steps removed, offset from master, mean path delay.
    CurrentDataSet,
    /// PORT_DATA_SET (0x2004): the port's identity, state and intervals.
    PortDataSet,
    /// linuxptp's TIME_STATUS_NP (0xC000): master offset, ingress time, grandmaster.
    TimeStatusNp,
}

impl ManagementId {
    /// Every id, for tests.
    pub const ALL: [ManagementId; 3] = [
        ManagementId::CurrentDataSet,
        ManagementId::PortDataSet,
        ManagementId::TimeStatusNp,
    ];

    /// The id on the wire.
    pub fn code(self) -> u16 {
        match self {
            ManagementId::CurrentDataSet => 0x2001,
            ManagementId::PortDataSet => 0x2004,
            ManagementId::TimeStatusNp => 0xC000,
        }
    }

    /// The id of a wire code, if it is one of these.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|id| id.code() == code)
    }

    /// The size of the id's data set on the wire, bytes.
    pub fn data_len(self) -> usize {
        match self {
            ManagementId::CurrentDataSet => 18,
            ManagementId::PortDataSet => 26,
            ManagementId::TimeStatusNp => 50,
        }
    }

    /// linuxptp's name for it.
    pub fn name(self) -> &'static str {
        match self {
            ManagementId::CurrentDataSet => "CURRENT_DATA_SET",
            ManagementId::PortDataSet => "PORT_DATA_SET",
            ManagementId::TimeStatusNp => "TIME_STATUS_NP",
        }
    }
}

impl fmt::Display for ManagementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A clock's 8-byte identity; shown as linuxptp shows it (`7aef03.fffe.91e92b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClockIdentity(pub [u8; 8]);

impl fmt::Display for ClockIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}.{:02x}{:02x}.{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }
}

/// A port: its clock and its number (0xFFFF with an all-ones clock: every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortIdentity {
    /// The clock.
    pub clock: ClockIdentity,
    /// The port number.
    pub port: u16,
}

impl PortIdentity {
    /// Every port of every clock (what `pmc` targets by default).
    pub const ALL: PortIdentity = PortIdentity {
        clock: ClockIdentity([0xff; 8]),
        port: 0xffff,
    };
}

impl fmt::Display for PortIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.clock, self.port)
    }
}

/// The actionField of a management message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// GET (0).
    Get,
    /// SET (1).
    Set,
    /// RESPONSE (2): the answer to a GET or SET.
    Response,
    /// COMMAND (3).
    Command,
    /// ACKNOWLEDGE (4): the answer to a COMMAND (linuxptp also acknowledges with an error).
    Acknowledge,
}

impl Action {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Action::Get,
            1 => Action::Set,
            2 => Action::Response,
            3 => Action::Command,
            4 => Action::Acknowledge,
            _ => return None,
        })
    }
}

/// A port's state (IEEE 1588 and linuxptp's `enum port_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortState {
    /// 1.
    Initializing,
    /// 2.
    Faulty,
    /// 3.
    Disabled,
    /// 4: no master heard (for instance after the announce receipt timeout).
    Listening,
    /// 5.
    PreMaster,
    /// 6.
    Master,
    /// 7.
    Passive,
    /// 8: following a master, not (yet) locked; a `free_running` ptp4l stays here.
    Uncalibrated,
    /// 9: following a master, locked.
    Slave,
    /// 10: linuxptp's grandmaster state.
    GrandMaster,
}

impl PortState {
    /// The state of a wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        use PortState::*;
        const STATES: [PortState; 10] = [
            Initializing,
            Faulty,
            Disabled,
            Listening,
            PreMaster,
            Master,
            Passive,
            Uncalibrated,
            Slave,
            GrandMaster,
        ];
        STATES.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// linuxptp's name for it.
    pub fn name(self) -> &'static str {
        match self {
            PortState::Initializing => "INITIALIZING",
            PortState::Faulty => "FAULTY",
            PortState::Disabled => "DISABLED",
            PortState::Listening => "LISTENING",
            PortState::PreMaster => "PRE_MASTER",
            PortState::Master => "MASTER",
            PortState::Passive => "PASSIVE",
            PortState::Uncalibrated => "UNCALIBRATED",
            PortState::Slave => "SLAVE",
            PortState::GrandMaster => "GRAND_MASTER",
        }
    }
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// linuxptp's TIME_STATUS_NP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeStatusNp {
    /// The last measured offset from the master, ns.
    pub master_offset_ns: i64,
    /// When the last Sync arrived, ns in the time stamps' clock (0: none since the port left
    /// a master).
    pub ingress_time_ns: i64,
    /// cumulativeScaledRateOffset.
    pub cumulative_scaled_rate_offset: i32,
    /// scaledLastGmPhaseChange.
    pub scaled_last_gm_phase_change: i32,
    /// gmTimeBaseIndicator.
    pub gm_time_base_indicator: u16,
    /// lastGmPhaseChange as on the wire (a 96-bit scaled ns value).
    pub last_gm_phase_change: [u8; 12],
    /// Whether a grandmaster was selected (stays true after it is gone: see the module docs
    /// of the clock source).
    pub gm_present: bool,
    /// The grandmaster's identity.
    pub gm_identity: ClockIdentity,
}

/// PORT_DATA_SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortDataSet {
    /// The port.
    pub port_identity: PortIdentity,
    /// Its state.
    pub port_state: PortState,
    /// logMinDelayReqInterval.
    pub log_min_delay_req_interval: i8,
    /// peerMeanPathDelay, ns × 2^16.
    pub peer_mean_path_delay: i64,
    /// logAnnounceInterval.
    pub log_announce_interval: i8,
    /// announceReceiptTimeout.
    pub announce_receipt_timeout: u8,
    /// logSyncInterval.
    pub log_sync_interval: i8,
    /// delayMechanism (1 E2E, 2 P2P).
    pub delay_mechanism: u8,
    /// logMinPdelayReqInterval.
    pub log_min_pdelay_req_interval: i8,
    /// versionNumber.
    pub version_number: u8,
}

/// CURRENT_DATA_SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentDataSet {
    /// stepsRemoved.
    pub steps_removed: u16,
    /// offsetFromMaster, ns × 2^16.
    pub offset_from_master: i64,
    /// meanPathDelay, ns × 2^16.
    pub mean_path_delay: i64,
}

impl CurrentDataSet {
    /// offsetFromMaster in ns.
    pub fn offset_from_master_ns(&self) -> f64 {
        self.offset_from_master as f64 / 65_536.0
    }

    /// meanPathDelay in ns.
    pub fn mean_path_delay_ns(&self) -> f64 {
        self.mean_path_delay as f64 / 65_536.0
    }
}

/// What an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// TIME_STATUS_NP.
    TimeStatus(TimeStatusNp),
    /// PORT_DATA_SET.
    PortDataSet(PortDataSet),
    /// CURRENT_DATA_SET.
    CurrentDataSet(CurrentDataSet),
    /// A management error status: ptp4l refused the request.
    Error {
        /// The management error id (0x0002 NO_SUCH_ID, 0x0006 NOT_SUPPORTED, ...).
        error: u16,
        /// The management id it is about (as on the wire: it may be one this client does not
        /// know).
        id: u16,
    },
}

/// A decoded answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Who answered (ptp4l's clock, and the port for port data sets).
    pub source: PortIdentity,
    /// Whom it answers (the asker's source port identity).
    pub target: PortIdentity,
    /// The sequence id of the request it answers.
    pub sequence_id: u16,
    /// domainNumber.
    pub domain: u8,
    /// RESPONSE or ACKNOWLEDGE.
    pub action: Action,
    /// The data set, or ptp4l's error status.
    pub body: Body,
}

/// The name of a management error id (IEEE 1588-2008 table 72).
pub fn error_name(error: u16) -> &'static str {
    match error {
        0x0001 => "RESPONSE_TOO_BIG",
        0x0002 => "NO_SUCH_ID",
        0x0003 => "WRONG_LENGTH",
        0x0004 => "WRONG_VALUE",
        0x0005 => "NOT_SETABLE",
        0x0006 => "NOT_SUPPORTED",
        0xFFFE => "GENERAL_ERROR",
        _ => "unknown error",
    }
}

/// Why bytes are not a management answer this client can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the part being read needs.
    #[error("{what}: needs {need} bytes, the message has {got}")]
    Short {
        /// The part.
        what: &'static str,
        /// Bytes it needs (from the message start).
        need: usize,
        /// Bytes there are.
        got: usize,
    },
    /// More than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes, more than {MAX_MESSAGE_BYTES}")]
    TooLong(usize),
    /// Not a management message.
    #[error("messageType {0:#x} is not a management message (0xd)")]
    NotManagement(u8),
    /// Another PTP version.
    #[error("versionPTP {0} is not 2")]
    Version(u8),
    /// messageLength disagrees with the datagram.
    #[error("messageLength says {header} bytes, the datagram has {received}")]
    Length {
        /// The header's messageLength.
        header: u16,
        /// The datagram's size.
        received: usize,
    },
    /// A request (GET, SET, COMMAND), not an answer.
    #[error("actionField {0} is not an answer (RESPONSE 2 or ACKNOWLEDGE 4)")]
    NotAnAnswer(u8),
    /// A TLV type other than management or management error status.
    #[error("TLV type {0:#06x} is neither MANAGEMENT nor MANAGEMENT_ERROR_STATUS")]
    TlvType(u16),
    /// The TLV's length field disagrees with the message or the data set.
    #[error("{what}: TLV length {tlv_length}, expected {expected}")]
    TlvLength {
        /// Which TLV.
        what: String,
        /// Its length field.
        tlv_length: u16,
        /// What it should be.
        expected: String,
    },
    /// A management id this client does not decode.
    #[error("management id {0:#06x} is not TIME_STATUS_NP, PORT_DATA_SET or CURRENT_DATA_SET")]
    UnknownId(u16),
    /// A field with a value outside its range.
    #[error("{field}: {value} is not a valid value")]
    BadValue {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
}

/// A GET request for `id`, as `pmc -u -b 0 'GET …'` sends it: from `source`, to `target`
/// (usually [`PortIdentity::ALL`]), no boundary hops, the data set's size of zeros after the
/// id (what pmc sends; ptp4l 3.1.1 answers zero-length GETs as well).
pub fn encode_get(
    id: ManagementId,
    source: PortIdentity,
    target: PortIdentity,
    domain: u8,
    sequence_id: u16,
) -> Vec<u8> {
    let len = MANAGEMENT_BYTES + TLV_HEADER_BYTES + id.data_len();
    let mut b = Vec::with_capacity(len);
    b.push(MESSAGE_TYPE_MANAGEMENT);
    b.push(PTP_VERSION);
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.push(domain);
    b.push(0); // reserved
    b.extend_from_slice(&[0; 2]); // flags
    b.extend_from_slice(&[0; 8]); // correction
    b.extend_from_slice(&[0; 4]); // reserved
    put_port(&mut b, source);
    b.extend_from_slice(&sequence_id.to_be_bytes());
    b.push(CONTROL_MANAGEMENT);
    b.push(0x7f); // logMessageInterval
    put_port(&mut b, target);
    b.extend_from_slice(&[0, 0, 0, 0]); // hops, hops, GET, reserved
    b.extend_from_slice(&TLV_MANAGEMENT.to_be_bytes());
    b.extend_from_slice(&((2 + id.data_len()) as u16).to_be_bytes());
    b.extend_from_slice(&id.code().to_be_bytes());
    b.resize(len, 0);
    b
}

fn put_port(b: &mut Vec<u8>, p: PortIdentity) {
    b.extend_from_slice(&p.clock.0);
    b.extend_from_slice(&p.port.to_be_bytes());
}

/// A bounds-checked big-endian reader over one message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&self, at: usize, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.bytes
            .get(at..at + N)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Short {
                what,
                need: at + N,
                got: self.bytes.len(),
            })
    }
    fn u8(&self, at: usize, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(at, what)?[0])
    }
    fn u16(&self, at: usize, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(at, what)?))
    }
    fn i32(&self, at: usize, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(at, what)?))
    }
    fn i64(&self, at: usize, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(at, what)?))
    }
    fn port(&self, at: usize, what: &'static str) -> Result<PortIdentity, DecodeError> {
        Ok(PortIdentity {
            clock: ClockIdentity(self.take(at, what)?),
            port: self.u16(at + 8, what)?,
        })
    }
}

/// Decode one answer from ptp4l.
pub fn decode_answer(bytes: &[u8]) -> Result<Answer, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLong(bytes.len()));
    }
    let r = Reader { bytes };
    let message_type = r.u8(0, "messageType")? & 0x0f;
    if message_type != MESSAGE_TYPE_MANAGEMENT {
        return Err(DecodeError::NotManagement(message_type));
    }
    let version = r.u8(1, "versionPTP")? & 0x0f;
    if version != PTP_VERSION {
        return Err(DecodeError::Version(version));
    }
    let header = r.u16(2, "messageLength")?;
    if usize::from(header) != bytes.len() {
        return Err(DecodeError::Length {
            header,
            received: bytes.len(),
        });
    }
    let action_code = r.u8(46, "actionField")? & 0x0f;
    let action = match Action::from_code(action_code) {
        Some(a @ (Action::Response | Action::Acknowledge)) => a,
        _ => return Err(DecodeError::NotAnAnswer(action_code)),
    };
    Ok(Answer {
        source: r.port(20, "sourcePortIdentity")?,
        target: r.port(34, "targetPortIdentity")?,
        sequence_id: r.u16(30, "sequenceId")?,
        domain: r.u8(4, "domainNumber")?,
        action,
        body: decode_tlv(&r)?,
    })
}

/// The one TLV after the management header; it must end where the message ends.
fn decode_tlv(r: &Reader<'_>) -> Result<Body, DecodeError> {
    let tlv_type = r.u16(MANAGEMENT_BYTES, "TLV type")?;
    let tlv_length = r.u16(MANAGEMENT_BYTES + 2, "TLV length")?;
    let room = r.bytes.len().saturating_sub(MANAGEMENT_BYTES + 4);
    if usize::from(tlv_length) != room {
        return Err(DecodeError::TlvLength {
            what: "the message's TLV".into(),
            tlv_length,
            expected: format!("{room} (to the end of the message)"),
        });
    }
    let at = MANAGEMENT_BYTES + 4;
    match tlv_type {
        TLV_MANAGEMENT_ERROR_STATUS => {
            if tlv_length < 8 {
                return Err(DecodeError::TlvLength {
                    what: "MANAGEMENT_ERROR_STATUS".into(),
                    tlv_length,
                    expected: "at least 8".into(),
                });
            }
            Ok(Body::Error {
                error: r.u16(at, "managementErrorId")?,
                id: r.u16(at + 2, "managementId")?,
            })
        }
        TLV_MANAGEMENT => {
            let code = r.u16(at, "managementId")?;
            let id = ManagementId::from_code(code).ok_or(DecodeError::UnknownId(code))?;
            if usize::from(tlv_length) != 2 + id.data_len() {
                return Err(DecodeError::TlvLength {
                    what: id.name().into(),
                    tlv_length,
                    expected: (2 + id.data_len()).to_string(),
                });
            }
            decode_data_set(r, id, at + 2)
        }
        other => Err(DecodeError::TlvType(other)),
    }
}

fn decode_data_set(r: &Reader<'_>, id: ManagementId, at: usize) -> Result<Body, DecodeError> {
    Ok(match id {
        ManagementId::TimeStatusNp => Body::TimeStatus(TimeStatusNp {
            master_offset_ns: r.i64(at, "master_offset")?,
            ingress_time_ns: r.i64(at + 8, "ingress_time")?,
            cumulative_scaled_rate_offset: r.i32(at + 16, "cumulativeScaledRateOffset")?,
            scaled_last_gm_phase_change: r.i32(at + 20, "scaledLastGmPhaseChange")?,
            gm_time_base_indicator: r.u16(at + 24, "gmTimeBaseIndicator")?,
            last_gm_phase_change: r.take(at + 26, "lastGmPhaseChange")?,
            gm_present: match r.i32(at + 38, "gmPresent")? {
                0 => false,
                1 => true,
                v => {
                    return Err(DecodeError::BadValue {
                        field: "gmPresent",
                        value: v.into(),
                    })
                }
            },
            gm_identity: ClockIdentity(r.take(at + 42, "gmIdentity")?),
        }),
        ManagementId::PortDataSet => {
            let state = r.u8(at + 10, "portState")?;
            Body::PortDataSet(PortDataSet {
                port_identity: r.port(at, "portIdentity")?,
                port_state: PortState::from_code(state).ok_or(DecodeError::BadValue {
                    field: "portState",
                    value: state.into(),
                })?,
                log_min_delay_req_interval: r.u8(at + 11, "logMinDelayReqInterval")? as i8,
                peer_mean_path_delay: r.i64(at + 12, "peerMeanPathDelay")?,
                log_announce_interval: r.u8(at + 20, "logAnnounceInterval")? as i8,
                announce_receipt_timeout: r.u8(at + 21, "announceReceiptTimeout")?,
                log_sync_interval: r.u8(at + 22, "logSyncInterval")? as i8,
                delay_mechanism: r.u8(at + 23, "delayMechanism")?,
                log_min_pdelay_req_interval: r.u8(at + 24, "logMinPdelayReqInterval")? as i8,
                version_number: r.u8(at + 25, "versionNumber")?,
            })
        }
        ManagementId::CurrentDataSet => Body::CurrentDataSet(CurrentDataSet {
            steps_removed: r.u16(at, "stepsRemoved")?,
            offset_from_master: r.i64(at + 2, "offsetFromMaster")?,
            mean_path_delay: r.i64(at + 10, "meanPathDelay")?,
        }),
    })
}

/// The captured exchanges of `captures.txt` (real linuxptp 3.1.1 bytes), by name.
pub fn captures() -> Vec<(&'static str, Vec<u8>)> {
    CAPTURES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, hex) = l.split_once(' ')?;
            Some((name, unhex(hex.trim())?))
        })
        .collect()
}

/// Real exchanges with linuxptp 3.1.1, one per line (see the file's header).
pub const CAPTURES: &str = include_str!("captures.txt");

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(name: &str) -> Vec<u8> {
        captures()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no capture {name}"))
    }

    /// pmc's requester: clock identity zero, its pid as the port number.
    fn pmc_source(get: &[u8]) -> PortIdentity {
        PortIdentity {
            clock: ClockIdentity([0; 8]),
            port: u16::from_be_bytes([get[28], get[29]]),
        }
    }

    #[test]
    fn encodes_gets_byte_for_byte_as_pmc_does() {
        for (state, id) in [
            ("synchronised", ManagementId::TimeStatusNp),
            ("synchronised", ManagementId::PortDataSet),
            ("synchronised", ManagementId::CurrentDataSet),
            ("grandmaster_gone", ManagementId::TimeStatusNp),
        ] {
            let name = format!("{state}.{}.get", id.name().to_lowercase());
            let pmc = capture(&name);
            let ours = encode_get(id, pmc_source(&pmc), PortIdentity::ALL, 0, 0);
            assert_eq!(ours, pmc, "{name}");
        }
    }

    #[test]
    fn decodes_a_synchronised_slave() {
        let a = decode_answer(&capture("synchronised.time_status_np.answer")).unwrap();
        assert_eq!(a.action, Action::Response);
        assert_eq!(a.source.clock.to_string(), "7aef03.fffe.91e92b");
        assert_eq!(
            a.target,
            pmc_source(&capture("synchronised.time_status_np.get"))
        );
        let Body::TimeStatus(t) = a.body else {
            panic!("{a:?}")
        };
        assert_eq!(t.master_offset_ns, -164);
        assert_eq!(t.ingress_time_ns, 1_796_670_372_765_528_374);
        assert!(t.gm_present);
        assert_eq!(t.gm_identity.to_string(), "327ba7.fffe.d676e3");
        let a = decode_answer(&capture("synchronised.port_data_set.answer")).unwrap();
        let Body::PortDataSet(p) = a.body else {
            panic!("{a:?}")
        };
        assert_eq!(p.port_state, PortState::Uncalibrated);
        assert_eq!(p.port_identity.to_string(), "7aef03.fffe.91e92b-1");
        assert_eq!(
            (p.log_announce_interval, p.announce_receipt_timeout),
            (0, 3)
        );
        assert_eq!((p.log_sync_interval, p.delay_mechanism), (-2, 1));
        assert_eq!(p.version_number, 2);
        let a = decode_answer(&capture("synchronised.current_data_set.answer")).unwrap();
        let Body::CurrentDataSet(c) = a.body else {
            panic!("{a:?}")
        };
        assert_eq!(c.steps_removed, 1);
        assert_eq!(c.offset_from_master_ns(), -179.0);
        assert_eq!(c.mean_path_delay_ns(), 2743.0);
    }

    #[test]
    fn decodes_an_asymmetric_path_and_a_lost_grandmaster() {
        let a = decode_answer(&capture("asymmetry_3ms.time_status_np.answer")).unwrap();
        let Body::TimeStatus(t) = a.body else {
            panic!("{a:?}")
        };
        assert_eq!(t.master_offset_ns, -3_000_046);
        let a = decode_answer(&capture("grandmaster_gone.port_data_set.answer")).unwrap();
        let Body::PortDataSet(p) = a.body else {
            panic!("{a:?}")
        };
        assert_eq!(p.port_state, PortState::Listening);
        // TIME_STATUS_NP still says gmPresent, with the last offset; ingress_time is reset.
        let a = decode_answer(&capture("grandmaster_gone.time_status_np.answer")).unwrap();
        let Body::TimeStatus(t) = a.body else {
            panic!("{a:?}")
        };
        assert!(t.gm_present);
        assert_eq!((t.master_offset_ns, t.ingress_time_ns), (-3_000_175, 0));
        let a = decode_answer(&capture("grandmaster_gone.current_data_set.answer")).unwrap();
        let Body::CurrentDataSet(c) = a.body else {
            panic!("{a:?}")
        };
        assert_eq!(c.offset_from_master_ns(), -3_000_175.0);
    }

    #[test]
    fn decodes_management_errors() {
        let a = decode_answer(&capture("error.no_such_id.answer")).unwrap();
        assert_eq!(a.action, Action::Response);
        assert_eq!(
            a.body,
            Body::Error {
                error: 0x0002,
                id: 0x2099
            }
        );
        assert_eq!(error_name(0x0002), "NO_SUCH_ID");
        let a = decode_answer(&capture("error.command_not_supported.answer")).unwrap();
        assert_eq!(a.action, Action::Acknowledge);
        assert_eq!(
            a.body,
            Body::Error {
                error: 0x0006,
                id: 0xC000
            }
        );
    }

    #[test]
    fn rejects_what_is_not_an_answer_naming_why() {
        let good = capture("synchronised.time_status_np.answer");
        let get = capture("synchronised.time_status_np.get");
        assert_eq!(decode_answer(&get), Err(DecodeError::NotAnAnswer(0)));
        let mut b = good.clone();
        b[0] = 0x00;
        assert_eq!(decode_answer(&b), Err(DecodeError::NotManagement(0)));
        let mut b = good.clone();
        b[1] = 0x01;
        assert_eq!(decode_answer(&b), Err(DecodeError::Version(1)));
        let short = &good[..good.len() - 1];
        assert!(matches!(
            decode_answer(short),
            Err(DecodeError::Length {
                header: 104,
                received: 103
            })
        ));
        let mut b = good.clone();
        b[51] = 50; // TLV length 50 instead of 52
        assert!(
            matches!(decode_answer(&b), Err(DecodeError::TlvLength { .. })),
            "{:?}",
            decode_answer(&b)
        );
        let mut b = good.clone();
        b[48..50].copy_from_slice(&0x0003u16.to_be_bytes());
        assert_eq!(decode_answer(&b), Err(DecodeError::TlvType(3)));
        let mut b = good.clone();
        b[52..54].copy_from_slice(&0x2002u16.to_be_bytes());
        assert_eq!(decode_answer(&b), Err(DecodeError::UnknownId(0x2002)));
        let mut b = good.clone();
        b[54 + 41] = 7; // gmPresent = 7
        assert_eq!(
            decode_answer(&b),
            Err(DecodeError::BadValue {
                field: "gmPresent",
                value: 7
            })
        );
        let mut b = capture("synchronised.port_data_set.answer");
        b[54 + 10] = 11;
        assert_eq!(
            decode_answer(&b),
            Err(DecodeError::BadValue {
                field: "portState",
                value: 11
            })
        );
        assert!(matches!(decode_answer(&[]), Err(DecodeError::Short { .. })));
        assert_eq!(
            decode_answer(&vec![0x0d; 1501]),
            Err(DecodeError::TooLong(1501))
        );
    }

    #[test]
    fn a_zero_length_get_is_answered_in_full() {
        let a = decode_answer(&capture("zero_length.time_status_np.answer")).unwrap();
        assert!(matches!(a.body, Body::TimeStatus(t) if t.gm_present));
    }
}
