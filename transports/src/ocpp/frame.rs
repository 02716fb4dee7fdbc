//! OCPP-J RPC frames: `[2, id, action, payload]` (CALL), `[3, id, payload]` (CALLRESULT),
//! `[4, id, code, description, details]` (CALLERROR) and, in OCPP 2.1 only,
//! `[5, id, code, description, details]` (CALLRESULTERROR) and `[6, id, action, payload]` (SEND).
//!
//! Invariants kept here:
//! - a decoded frame is structurally valid: message id of 1..=[`MAX_MESSAGE_ID_LEN`] characters,
//!   payloads and error details are JSON objects, error codes are the ones OCPP defines;
//! - a frame larger than [`MAX_FRAME_BYTES`] is refused before it is parsed;
//! - every decode failure is a [`FrameError`] that carries the CALLERROR code OCPP prescribes
//!   and the message id when it could be read (else [`UNKNOWN_MESSAGE_ID`]), so the connection
//!   can answer and live on. Decoding never panics (property-tested and fuzzed).
//! - encoding then decoding gives the same frame back.

use std::fmt;

use serde_json::{Map, Value};

use super::OcppVersion;

/// The largest frame (bytes of WebSocket text) this crate decodes. A SetChargingProfile with
/// the schema's 3 × 1024 periods stays well below it; anything larger is answered with a
/// FormatViolation without being parsed.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// OCPP's limit on a message id (a string of at most 36 characters, e.g. a UUID).
pub const MAX_MESSAGE_ID_LEN: usize = 36;

/// OCPP's limit on an errorDescription; longer descriptions are cut at a character boundary.
pub const MAX_ERROR_DESCRIPTION_LEN: usize = 255;

/// The message id a CALLERROR carries when the offending frame's id could not be read
/// (OCPP-J: "-1").
pub const UNKNOWN_MESSAGE_ID: &str = "-1";

/// A validated OCPP message id: 1 to [`MAX_MESSAGE_ID_LEN`] characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// Checks the length limits; the id is otherwise opaque.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidMessageId> {
        let id = id.into();
        let chars = id.chars().count();
        if chars == 0 || chars > MAX_MESSAGE_ID_LEN {
            return Err(InvalidMessageId { chars });
        }
        Ok(MessageId(id))
    }

    /// The id CALLERRORs use when the offending frame's id could not be read.
    pub fn unknown() -> Self {
        MessageId(UNKNOWN_MESSAGE_ID.to_owned())
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message id that is empty or longer than [`MAX_MESSAGE_ID_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message id has {chars} characters, OCPP allows 1..={MAX_MESSAGE_ID_LEN}")]
pub struct InvalidMessageId {
    /// The offending id's length in characters.
    pub chars: usize,
}

/// The error codes of OCPP-J 2.0.1 / 2.1 CALLERROR and CALLRESULTERROR frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Payload for the action is syntactically incorrect.
    FormatViolation,
    /// Any other error not covered by the more specific codes.
    GenericError,
    /// An internal error occurred and the receiver could not process the action.
    InternalError,
    /// A message type number the receiver does not support.
    MessageTypeNotSupported,
    /// The requested action is not known by the receiver.
    NotImplemented,
    /// The requested action is recognised but not supported by the receiver.
    NotSupported,
    /// A field violates occurrence constraints (missing required field, too many items).
    OccurrenceConstraintViolation,
    /// A field holds an invalid value (out of range, not in the enumeration, too long).
    PropertyConstraintViolation,
    /// The payload does not conform to the PDU structure.
    ProtocolError,
    /// The content is not a valid RPC request (e.g. the message id could not be read).
    RpcFrameworkError,
    /// A security issue prevented the receiver from completing the action.
    SecurityError,
    /// A field violates data type constraints (e.g. a number where a string is required).
    TypeConstraintViolation,
}

impl ErrorCode {
    /// Every code, for parsing and tests.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::FormatViolation,
        ErrorCode::GenericError,
        ErrorCode::InternalError,
        ErrorCode::MessageTypeNotSupported,
        ErrorCode::NotImplemented,
        ErrorCode::NotSupported,
        ErrorCode::OccurrenceConstraintViolation,
        ErrorCode::PropertyConstraintViolation,
        ErrorCode::ProtocolError,
        ErrorCode::RpcFrameworkError,
        ErrorCode::SecurityError,
        ErrorCode::TypeConstraintViolation,
    ];

    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FormatViolation => "FormatViolation",
            ErrorCode::GenericError => "GenericError",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::MessageTypeNotSupported => "MessageTypeNotSupported",
            ErrorCode::NotImplemented => "NotImplemented",
            ErrorCode::NotSupported => "NotSupported",
            ErrorCode::OccurrenceConstraintViolation => "OccurrenceConstraintViolation",
            ErrorCode::PropertyConstraintViolation => "PropertyConstraintViolation",
            ErrorCode::ProtocolError => "ProtocolError",
            ErrorCode::RpcFrameworkError => "RpcFrameworkError",
            ErrorCode::SecurityError => "SecurityError",
            ErrorCode::TypeConstraintViolation => "TypeConstraintViolation",
        }
    }

    /// Parses a wire code; `None` for a code OCPP does not define.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reported in a CALLERROR or CALLRESULTERROR frame.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// The OCPP error code.
    pub code: ErrorCode,
    /// Human-readable description, at most [`MAX_ERROR_DESCRIPTION_LEN`] characters.
    pub description: String,
    /// Extra details (a JSON object, `{}` when there are none).
    pub details: Map<String, Value>,
}

impl RpcError {
    /// An error with no details; the description is cut to [`MAX_ERROR_DESCRIPTION_LEN`].
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        RpcError {
            code,
            description: truncate_description(description.into()),
            details: Map::new(),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

fn truncate_description(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_ERROR_DESCRIPTION_LEN) {
        s.truncate(cut);
    }
    s
}

/// One OCPP-J RPC frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// `[2, id, action, payload]`: a request that must be answered.
    Call {
        /// Id the answer will carry.
        id: MessageId,
        /// Action name, e.g. `BootNotification`.
        action: String,
        /// The request payload (a JSON object).
        payload: Map<String, Value>,
    },
    /// `[3, id, payload]`: the answer to a CALL.
    CallResult {
        /// Id of the CALL answered.
        id: MessageId,
        /// The response payload (a JSON object).
        payload: Map<String, Value>,
    },
    /// `[4, id, code, description, details]`: a CALL failed.
    CallError {
        /// Id of the CALL answered, or [`UNKNOWN_MESSAGE_ID`].
        id: MessageId,
        /// What went wrong.
        error: RpcError,
    },
    /// `[5, id, code, description, details]` (OCPP 2.1): a CALLRESULT could not be processed.
    CallResultError {
        /// Id of the CALLRESULT that failed.
        id: MessageId,
        /// What went wrong.
        error: RpcError,
    },
    /// `[6, id, action, payload]` (OCPP 2.1): an unconfirmed message, never answered.
    Send {
        /// Message id.
        id: MessageId,
        /// Action name.
        action: String,
        /// The payload (a JSON object).
        payload: Map<String, Value>,
    },
}

/// Message type numbers of OCPP-J.
const CALL: u64 = 2;
const CALL_RESULT: u64 = 3;
const CALL_ERROR: u64 = 4;
const CALL_RESULT_ERROR: u64 = 5;
const SEND: u64 = 6;

/// Why a frame could not be decoded. Each variant knows the OCPP error code to answer with
/// ([`FrameError::code`]) and the message id when it could be read ([`FrameError::message_id`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The frame exceeds [`MAX_FRAME_BYTES`]; it was not parsed.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge {
        /// Size of the refused frame in bytes.
        len: usize,
    },
    /// The text is not JSON.
    #[error("frame is not valid JSON: {reason}")]
    NotJson {
        /// serde_json's description (line and column).
        reason: String,
    },
    /// The JSON is not an array whose first element is a message type number.
    #[error("frame is not an OCPP-J array [messageTypeId, messageId, ...]: {reason}")]
    NotRpcArray {
        /// What was found instead.
        reason: &'static str,
    },
    /// The message type number is not one this version supports.
    #[error("message type {type_id} is not supported by {version}")]
    UnsupportedMessageType {
        /// The number found (or -1 when it was not an unsigned integer).
        type_id: i64,
        /// The connection's version.
        version: OcppVersion,
        /// The message id, when it could be read.
        id: Option<MessageId>,
    },
    /// The message id is missing, not a string, or breaks the length limit.
    #[error("message id could not be read: {reason}")]
    BadMessageId {
        /// What was wrong with it.
        reason: String,
        /// The message type number, to know whether the frame was a request.
        type_id: u64,
    },
    /// The array has the wrong number of elements for its message type.
    #[error("message type {type_id} needs {expected} elements, frame has {found}")]
    WrongArity {
        /// The message type number.
        type_id: u64,
        /// Elements required.
        expected: usize,
        /// Elements found.
        found: usize,
        /// The message id.
        id: MessageId,
    },
    /// An element other than the payload has the wrong JSON type (action, error code, ...).
    #[error("frame element `{element}` is invalid: {reason}")]
    BadElement {
        /// The message type number.
        type_id: u64,
        /// Which element (`action`, `errorCode`, `errorDescription`, `errorDetails`).
        element: &'static str,
        /// What was wrong with it.
        reason: String,
        /// The message id.
        id: MessageId,
    },
    /// The payload is not a JSON object.
    #[error("payload must be a JSON object, found {found}")]
    PayloadNotObject {
        /// The message type number.
        type_id: u64,
        /// The JSON type found.
        found: &'static str,
        /// The message id.
        id: MessageId,
    },
}

impl FrameError {
    /// The CALLERROR code OCPP prescribes for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FormatViolation,
            FrameError::NotJson { .. }
            | FrameError::NotRpcArray { .. }
            | FrameError::BadMessageId { .. }
            | FrameError::WrongArity { .. }
            | FrameError::BadElement { .. } => ErrorCode::RpcFrameworkError,
            FrameError::UnsupportedMessageType { .. } => ErrorCode::MessageTypeNotSupported,
            FrameError::PayloadNotObject { .. } => ErrorCode::FormatViolation,
        }
    }

    /// The message id of the offending frame, when it could be read.
    pub fn message_id(&self) -> Option<&MessageId> {
        match self {
            FrameError::UnsupportedMessageType { id, .. } => id.as_ref(),
            FrameError::WrongArity { id, .. }
            | FrameError::BadElement { id, .. }
            | FrameError::PayloadNotObject { id, .. } => Some(id),
            FrameError::TooLarge { .. }
            | FrameError::NotJson { .. }
            | FrameError::NotRpcArray { .. }
            | FrameError::BadMessageId { .. } => None,
        }
    }

    /// Whether the offending frame claimed to be an answer (CALLRESULT, CALLERROR,
    /// CALLRESULTERROR). OCPP forbids answering an answer with a CALLERROR; the connection
    /// fails the matching outstanding CALL instead.
    pub fn is_answer(&self) -> bool {
        let type_id = match self {
            FrameError::BadMessageId { type_id, .. }
            | FrameError::WrongArity { type_id, .. }
            | FrameError::BadElement { type_id, .. }
            | FrameError::PayloadNotObject { type_id, .. } => *type_id,
            _ => return false,
        };
        matches!(type_id, CALL_RESULT | CALL_ERROR | CALL_RESULT_ERROR)
    }

    /// The CALLERROR frame that answers this failure (id `-1` when the id was unreadable).
    pub fn to_call_error(&self) -> Frame {
        Frame::CallError {
            id: self
                .message_id()
                .cloned()
                .unwrap_or_else(MessageId::unknown),
            error: RpcError::new(self.code(), self.to_string()),
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Frame {
    /// The frame's message id.
    pub fn id(&self) -> &MessageId {
        match self {
            Frame::Call { id, .. }
            | Frame::CallResult { id, .. }
            | Frame::CallError { id, .. }
            | Frame::CallResultError { id, .. }
            | Frame::Send { id, .. } => id,
        }
    }

    /// Decodes one WebSocket text message for a connection speaking `version`.
    pub fn decode(text: &str, version: OcppVersion) -> Result<Frame, FrameError> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { len: text.len() });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| FrameError::NotJson {
            reason: e.to_string(),
        })?;
        Self::from_value(value, version)
    }

    fn from_value(value: Value, version: OcppVersion) -> Result<Frame, FrameError> {
        let Value::Array(items) = value else {
            return Err(FrameError::NotRpcArray {
                reason: "not a JSON array",
            });
        };
        let mut items = items.into_iter();
        let type_value = items.next().ok_or(FrameError::NotRpcArray {
            reason: "empty array",
        })?;
        let id_value = items.next();
        let type_id = match type_value.as_u64() {
            Some(t) => t,
            None => {
                if !type_value.is_number() {
                    return Err(FrameError::NotRpcArray {
                        reason: "first element is not a message type number",
                    });
                }
                return Err(FrameError::UnsupportedMessageType {
                    type_id: type_value.as_i64().unwrap_or(-1),
                    version,
                    id: id_value.and_then(|v| readable_id(&v)),
                });
            }
        };
        let supported = match type_id {
            CALL | CALL_RESULT | CALL_ERROR => true,
            CALL_RESULT_ERROR | SEND => version.has_v21_frames(),
            _ => false,
        };
        if !supported {
            return Err(FrameError::UnsupportedMessageType {
                type_id: i64::try_from(type_id).unwrap_or(i64::MAX),
                version,
                id: id_value.and_then(|v| readable_id(&v)),
            });
        }
        let id = match id_value {
            None => {
                return Err(FrameError::BadMessageId {
                    reason: "missing".to_owned(),
                    type_id,
                })
            }
            Some(Value::String(s)) => MessageId::new(s).map_err(|e| FrameError::BadMessageId {
                reason: e.to_string(),
                type_id,
            })?,
            Some(other) => {
                return Err(FrameError::BadMessageId {
                    reason: format!("expected a string, found {}", json_type(&other)),
                    type_id,
                })
            }
        };
        let rest: Vec<Value> = items.collect();
        let expected = match type_id {
            CALL | SEND => 2,
            CALL_RESULT => 1,
            _ => 3,
        };
        if rest.len() != expected {
            return Err(FrameError::WrongArity {
                type_id,
                expected: expected + 2,
                found: rest.len() + 2,
                id,
            });
        }
        let mut rest = rest.into_iter();
        let mut next = || rest.next().unwrap_or(Value::Null);
        match type_id {
            CALL | SEND => {
                let action = match next() {
                    Value::String(a) if !a.is_empty() => a,
                    other => {
                        return Err(FrameError::BadElement {
                            type_id,
                            element: "action",
                            reason: format!(
                                "expected a non-empty string, found {}",
                                json_type(&other)
                            ),
                            id,
                        })
                    }
                };
                let payload = object_payload(next(), type_id, &id)?;
                Ok(if type_id == CALL {
                    Frame::Call {
                        id,
                        action,
                        payload,
                    }
                } else {
                    Frame::Send {
                        id,
                        action,
                        payload,
                    }
                })
            }
            CALL_RESULT => {
                let payload = object_payload(next(), type_id, &id)?;
                Ok(Frame::CallResult { id, payload })
            }
            _ => {
                let bad = |element: &'static str, reason: String, id: &MessageId| {
                    FrameError::BadElement {
                        type_id,
                        element,
                        reason,
                        id: id.clone(),
                    }
                };
                let code = match next() {
                    Value::String(c) => ErrorCode::parse(&c).ok_or_else(|| {
                        bad("errorCode", format!("unknown error code {c:?}"), &id)
                    })?,
                    other => {
                        return Err(bad(
                            "errorCode",
                            format!("expected a string, found {}", json_type(&other)),
                            &id,
                        ))
                    }
                };
                let description = match next() {
                    Value::String(d) => d,
                    other => {
                        return Err(bad(
                            "errorDescription",
                            format!("expected a string, found {}", json_type(&other)),
                            &id,
                        ))
                    }
                };
                let details = match next() {
                    Value::Object(d) => d,
                    other => {
                        return Err(bad(
                            "errorDetails",
                            format!("expected an object, found {}", json_type(&other)),
                            &id,
                        ))
                    }
                };
                let error = RpcError {
                    code,
                    description,
                    details,
                };
                Ok(if type_id == CALL_ERROR {
                    Frame::CallError { id, error }
                } else {
                    Frame::CallResultError { id, error }
                })
            }
        }
    }

    /// Encodes the frame as OCPP-J text.
    pub fn encode(&self) -> String {
        let value = match self {
            Frame::Call {
                id,
                action,
                payload,
            } => Value::Array(vec![
                CALL.into(),
                id.as_str().into(),
                action.as_str().into(),
                Value::Object(payload.clone()),
            ]),
            Frame::Send {
                id,
                action,
                payload,
            } => Value::Array(vec![
                SEND.into(),
                id.as_str().into(),
                action.as_str().into(),
                Value::Object(payload.clone()),
            ]),
            Frame::CallResult { id, payload } => Value::Array(vec![
                CALL_RESULT.into(),
                id.as_str().into(),
                Value::Object(payload.clone()),
            ]),
            Frame::CallError { id, error } => error_array(CALL_ERROR, id, error),
            Frame::CallResultError { id, error } => error_array(CALL_RESULT_ERROR, id, error),
        };
        value.to_string()
    }
}

fn error_array(type_id: u64, id: &MessageId, error: &RpcError) -> Value {
    Value::Array(vec![
        type_id.into(),
        id.as_str().into(),
        error.code.as_str().into(),
        error.description.as_str().into(),
        Value::Object(error.details.clone()),
    ])
}

fn readable_id(v: &Value) -> Option<MessageId> {
    v.as_str().and_then(|s| MessageId::new(s).ok())
}

fn object_payload(
    v: Value,
    type_id: u64,
    id: &MessageId,
) -> Result<Map<String, Value>, FrameError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(FrameError::PayloadNotObject {
            type_id,
            found: json_type(&other),
            id: id.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Frame, FrameError> {
        Frame::decode(s, OcppVersion::V201)
    }

    #[test]
    fn decodes_each_frame_type() {
        assert!(matches!(
            dec(r#"[2,"1","Heartbeat",{}]"#),
            Ok(Frame::Call { .. })
        ));
        assert!(matches!(
            dec(r#"[3,"1",{"a":1}]"#),
            Ok(Frame::CallResult { .. })
        ));
        let e = dec(r#"[4,"1","NotImplemented","nope",{}]"#).unwrap();
        assert_eq!(
            e,
            Frame::CallError {
                id: MessageId::new("1").unwrap(),
                error: RpcError::new(ErrorCode::NotImplemented, "nope")
            }
        );
        assert!(matches!(
            Frame::decode(r#"[5,"1","InternalError","x",{}]"#, OcppVersion::V21),
            Ok(Frame::CallResultError { .. })
        ));
        assert!(matches!(
            Frame::decode(r#"[6,"1","X",{}]"#, OcppVersion::V21),
            Ok(Frame::Send { .. })
        ));
    }

    #[test]
    fn error_codes_for_bad_frames() {
        let cases: &[(&str, ErrorCode, Option<&str>)] = &[
            ("not json", ErrorCode::RpcFrameworkError, None),
            ("{}", ErrorCode::RpcFrameworkError, None),
            ("[]", ErrorCode::RpcFrameworkError, None),
            (r#"["2","a"]"#, ErrorCode::RpcFrameworkError, None),
            (
                r#"[9,"a","X",{}]"#,
                ErrorCode::MessageTypeNotSupported,
                Some("a"),
            ),
            (
                r#"[5,"a","InternalError","",{}]"#,
                ErrorCode::MessageTypeNotSupported,
                Some("a"),
            ),
            (r#"[2,7,"X",{}]"#, ErrorCode::RpcFrameworkError, None),
            (
                r#"[2,"0123456789012345678901234567890123456","X",{}]"#,
                ErrorCode::RpcFrameworkError,
                None,
            ),
            (r#"[2,"a","X"]"#, ErrorCode::RpcFrameworkError, Some("a")),
            (r#"[2,"a",5,{}]"#, ErrorCode::RpcFrameworkError, Some("a")),
            (r#"[2,"a","X",[]]"#, ErrorCode::FormatViolation, Some("a")),
            (
                r#"[4,"a","Bogus","",{}]"#,
                ErrorCode::RpcFrameworkError,
                Some("a"),
            ),
        ];
        for (text, code, id) in cases {
            let err = dec(text).unwrap_err();
            assert_eq!(err.code(), *code, "{text}: {err}");
            assert_eq!(err.message_id().map(MessageId::as_str), *id, "{text}");
        }
    }

    #[test]
    fn oversized_frame_is_refused_unparsed() {
        let big = format!(r#"[2,"a","X",{{"p":"{}"}}]"#, "x".repeat(MAX_FRAME_BYTES));
        let err = dec(&big).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(err.to_call_error().id().as_str(), UNKNOWN_MESSAGE_ID);
    }

    #[test]
    fn answers_are_recognised() {
        assert!(dec(r#"[3,"a",5]"#).unwrap_err().is_answer());
        assert!(!dec(r#"[2,"a","X",5]"#).unwrap_err().is_answer());
    }

    #[test]
    fn description_is_truncated_on_char_boundary() {
        let e = RpcError::new(ErrorCode::GenericError, "é".repeat(300));
        assert_eq!(e.description.chars().count(), MAX_ERROR_DESCRIPTION_LEN);
    }
}
