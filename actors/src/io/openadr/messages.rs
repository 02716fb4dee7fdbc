//! The OpenADR 2.0b Simple-HTTP messages a VEN exchanges, read from and written to XML.
//!
//! [`Incoming::parse`] reads what a VTN answers (oadrCreatedPartyRegistration,
//! oadrDistributeEvent, oadrResponse, oadrRegisteredReport, oadrCreateReport,
//! oadrUpdatedReport, oadrRequestReregistration, oadrCancelPartyRegistration); a message
//! missing a required element is an error naming the element. [`Outgoing::to_xml`] writes
//! what the VEN sends, in the shape openleadr's VTN validates against the 2.0b schema.
//! Times are RFC 3339 (`time`), durations ISO 8601 (`PT10M`, [`parse_duration`]).

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::xml::{
    self, document, Element, Out, XmlError, EI, OADR, POWER, PYLD, SCALE, STRM, XCAL,
};

/// The longest duration accepted in a message (a week: longer than any event we act on).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);
/// The longest id (event, registration, VEN, request) accepted from a VTN, characters.
pub const MAX_ID_CHARS: usize = 96;
/// The most events one oadrDistributeEvent may carry.
pub const MAX_EVENTS: usize = 64;
/// The most intervals one signal may carry.
pub const MAX_INTERVALS: usize = 96;

/// An `ei:eiResponse`.
#[derive(Debug, Clone, PartialEq)]
pub struct EiResponse {
    /// `responseCode` (200 is OK).
    pub code: u16,
    /// `responseDescription`, if any.
    pub description: Option<String>,
    /// `requestID` (may be empty).
    pub request_id: Option<String>,
}

impl EiResponse {
    fn parse(parent: &Element) -> Result<EiResponse, XmlError> {
        let r = parent.child(EI, "eiResponse")?;
        Ok(EiResponse {
            code: r.parse_of(EI, "responseCode")?,
            description: r.opt_text(EI, "responseDescription"),
            request_id: r.opt_text(PYLD, "requestID"),
        })
    }

    /// Whether the code is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// An event's status (`ei:eventStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// `none`.
    None,
    /// `far`: not soon.
    Far,
    /// `near`: soon.
    Near,
    /// `active`: under way.
    Active,
    /// `completed`.
    Completed,
    /// `cancelled`.
    Cancelled,
}

impl std::str::FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => EventStatus::None,
            "far" => EventStatus::Far,
            "near" => EventStatus::Near,
            "active" => EventStatus::Active,
            "completed" => EventStatus::Completed,
            "cancelled" => EventStatus::Cancelled,
            other => return Err(format!("unknown event status {other:?}")),
        })
    }
}

/// One interval of a signal.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// Its start, Unix seconds.
    pub start_s: i64,
    /// Its length.
    pub duration: Duration,
    /// The payload value (`payloadFloat`).
    pub value: f64,
}

/// One event signal.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    /// `signalName` (`simple`, `LOAD_DISPATCH`, ...).
    pub name: String,
    /// `signalType` (`level`, `setpoint`, `delta`, ...).
    pub kind: String,
    /// The factor to kW of the payload, from the signal's `itemBase` scale (1 when none: kW).
    pub to_kw: f64,
    /// Its intervals in order.
    pub intervals: Vec<Interval>,
}

/// One `oadrEvent`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// `eventID`.
    pub id: String,
    /// `modificationNumber`.
    pub modification: u32,
    /// `eventStatus`.
    pub status: EventStatus,
    /// The active period's start, Unix seconds.
    pub start_s: i64,
    /// The active period's length.
    pub duration: Duration,
    /// `oadrResponseRequired` is `always` (else `never`).
    pub response_required: bool,
    /// The signals.
    pub signals: Vec<Signal>,
}

/// What a VTN asks a VEN to report (`oadrReportRequest`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportRequest {
    /// `reportRequestID`.
    pub request_id: String,
    /// `reportSpecifierID`: which registered report.
    pub specifier_id: String,
    /// The sampling period (`granularity`), if given.
    pub granularity: Option<Duration>,
    /// How often to send (`reportBackDuration`), if given.
    pub report_back: Option<Duration>,
    /// The requested data points (`rID`s).
    pub r_ids: Vec<String>,
}

/// A message from the VTN.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to a query or a registration.
    CreatedPartyRegistration {
        /// Its response.
        response: EiResponse,
        /// The registration id (None before registration).
        registration_id: Option<String>,
        /// The VEN id (None before registration).
        ven_id: Option<String>,
        /// The VTN's id.
        vtn_id: String,
        /// The poll period the VTN asks for.
        poll: Option<Duration>,
    },
    /// Events.
    DistributeEvent {
        /// `requestID` to echo in oadrCreatedEvent.
        request_id: String,
        /// The events.
        events: Vec<Event>,
    },
    /// A plain answer.
    Response(EiResponse),
    /// The answer to oadrRegisterReport, with the reports the VTN wants.
    RegisteredReport {
        /// Its response.
        response: EiResponse,
        /// Requests.
        requests: Vec<ReportRequest>,
    },
    /// The VTN asks for reports.
    CreateReport {
        /// `requestID`.
        request_id: String,
        /// Requests.
        requests: Vec<ReportRequest>,
    },
    /// The answer to oadrUpdateReport.
    UpdatedReport(EiResponse),
    /// The VTN asks the VEN to register again.
    RequestReregistration,
    /// The VTN ends the registration.
    CancelPartyRegistration {
        /// `requestID`.
        request_id: String,
        /// The registration.
        registration_id: String,
    },
    /// A message the VEN does not act on, by name.
    Other(String),
}

/// What the VEN says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Opt {
    /// It takes part.
    #[serde(rename = "optIn")]
    In,
    /// It does not.
    #[serde(rename = "optOut")]
    Out,
}

impl Opt {
    fn name(self) -> &'static str {
        match self {
            Opt::In => "optIn",
            Opt::Out => "optOut",
        }
    }
}

/// One line of oadrCreatedEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct EventResponse {
    /// The event.
    pub event_id: String,
    /// Its modification number.
    pub modification: u32,
    /// The opt.
    pub opt: Opt,
    /// 200, or an error code for an event the VEN could not read.
    pub code: u16,
}

/// The TELEMETRY_USAGE report the VEN registers.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// `reportSpecifierID`.
    pub specifier_id: String,
    /// The data point (`rID`).
    pub r_id: String,
    /// Its `resourceID`.
    pub resource_id: String,
    /// Its sampling period.
    pub period: Duration,
}

/// A message to the VTN.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Ask whether (and how) to register.
    QueryRegistration {
        /// `requestID`.
        request_id: String,
    },
    /// Register.
    CreatePartyRegistration {
        /// `requestID`.
        request_id: String,
        /// A registration to renew, if any.
        registration_id: Option<String>,
        /// The VEN id given before, if any.
        ven_id: Option<String>,
        /// `oadrVenName`.
        ven_name: String,
    },
    /// Poll.
    Poll {
        /// The VEN id.
        ven_id: String,
    },
    /// Opt in or out of events.
    CreatedEvent {
        /// The VEN id.
        ven_id: String,
        /// The oadrDistributeEvent's `requestID`.
        request_id: String,
        /// One per event.
        responses: Vec<EventResponse>,
    },
    /// Register the usage report.
    RegisterReport {
        /// `requestID`.
        request_id: String,
        /// The VEN id.
        ven_id: String,
        /// The report.
        report: UsageReport,
        /// Its creation time, Unix seconds.
        created_s: i64,
    },
    /// Accept report requests.
    CreatedReport {
        /// The VEN id.
        ven_id: String,
        /// The request being answered.
        request_id: String,
        /// The report requests now pending.
        pending: Vec<String>,
    },
    /// One report.
    UpdateReport {
        /// `requestID`.
        request_id: String,
        /// The VEN id.
        ven_id: String,
        /// The report request it answers.
        report_request_id: String,
        /// The report.
        report: UsageReport,
        /// The sample's time, Unix seconds.
        at_s: i64,
        /// The value, kW.
        value_kw: f64,
    },
    /// A plain answer.
    Response {
        /// The VEN id.
        ven_id: String,
        /// The request answered.
        request_id: String,
        /// The code.
        code: u16,
    },
}

/// The body of `oadrSignedObject`: the message element.
fn body(root: &Element) -> Result<&Element, XmlError> {
    if root.ns != OADR || root.name != "oadrPayload" {
        return Err(XmlError::Missing {
            element: "oadrPayload".into(),
            parent: "the document".into(),
        });
    }
    let signed = root.child(OADR, "oadrSignedObject")?;
    signed
        .children
        .iter()
        .find(|c| c.ns == OADR)
        .ok_or_else(|| XmlError::Missing {
            element: "an oadr message".into(),
            parent: "oadrSignedObject".into(),
        })
}

fn id(e: &Element, ns: &str, name: &str) -> Result<String, XmlError> {
    let t = e.text_of(ns, name)?;
    if t.chars().count() > MAX_ID_CHARS || t.chars().any(char::is_control) {
        return Err(XmlError::Invalid {
            element: name.into(),
            reason: format!("not an id of 1..={MAX_ID_CHARS} printable characters"),
        });
    }
    Ok(t)
}

fn opt_id(e: &Element, ns: &str, name: &str) -> Result<Option<String>, XmlError> {
    match e.opt_text(ns, name) {
        None => Ok(None),
        Some(_) => id(e, ns, name).map(Some),
    }
}

impl Incoming {
    /// Read a VTN's message.
    pub fn parse(bytes: &[u8]) -> Result<Incoming, XmlError> {
        let root = xml::parse(bytes)?;
        let m = body(&root)?;
        Ok(match m.name.as_str() {
            "oadrCreatedPartyRegistration" => Incoming::CreatedPartyRegistration {
                response: EiResponse::parse(m)?,
                registration_id: opt_id(m, EI, "registrationID")?,
                ven_id: opt_id(m, EI, "venID")?,
                vtn_id: id(m, EI, "vtnID")?,
                poll: m
                    .find(OADR, "oadrRequestedOadrPollFreq")
                    .map(|p| duration_in(p, XCAL, "duration"))
                    .transpose()?,
            },
            "oadrDistributeEvent" => Incoming::DistributeEvent {
                request_id: id(m, PYLD, "requestID")?,
                events: events(m)?,
            },
            "oadrResponse" => Incoming::Response(EiResponse::parse(m)?),
            "oadrRegisteredReport" => Incoming::RegisteredReport {
                response: EiResponse::parse(m)?,
                requests: report_requests(m)?,
            },
            "oadrCreateReport" => Incoming::CreateReport {
                request_id: id(m, PYLD, "requestID")?,
                requests: report_requests(m)?,
            },
            "oadrUpdatedReport" => Incoming::UpdatedReport(EiResponse::parse(m)?),
            "oadrRequestReregistration" => Incoming::RequestReregistration,
            "oadrCancelPartyRegistration" => Incoming::CancelPartyRegistration {
                request_id: id(m, PYLD, "requestID")?,
                registration_id: id(m, EI, "registrationID")?,
            },
            other => Incoming::Other(other.to_owned()),
        })
    }
}

fn events(m: &Element) -> Result<Vec<Event>, XmlError> {
    let all: Vec<&Element> = m.all(OADR, "oadrEvent").collect();
    if all.len() > MAX_EVENTS {
        return Err(XmlError::TooLarge(format!(
            "{} events, the limit is {MAX_EVENTS}",
            all.len()
        )));
    }
    all.into_iter().map(event).collect()
}

fn event(e: &Element) -> Result<Event, XmlError> {
    let ei = e.child(EI, "eiEvent")?;
    let d = ei.child(EI, "eventDescriptor")?;
    let period = ei.path(&[(EI, "eiActivePeriod"), (XCAL, "properties")])?;
    let start_s = date_time_in(period.child(XCAL, "dtstart")?)?;
    let duration = duration_in(period.child(XCAL, "duration")?, XCAL, "duration")?;
    let signals = ei
        .child(EI, "eiEventSignals")?
        .all(EI, "eiEventSignal")
        .map(|s| signal(s, start_s))
        .collect::<Result<Vec<_>, _>>()?;
    let response_required = e
        .opt_text(OADR, "oadrResponseRequired")
        .is_none_or(|r| r == "always");
    Ok(Event {
        id: id(d, EI, "eventID")?,
        modification: d.parse_of(EI, "modificationNumber")?,
        status: d.parse_of(EI, "eventStatus")?,
        start_s,
        duration,
        response_required,
        signals,
    })
}

fn signal(s: &Element, event_start_s: i64) -> Result<Signal, XmlError> {
    let intervals = s.child(STRM, "intervals")?;
    let list: Vec<&Element> = intervals.all(EI, "interval").collect();
    if list.len() > MAX_INTERVALS {
        return Err(XmlError::TooLarge(format!(
            "{} intervals, the limit is {MAX_INTERVALS}",
            list.len()
        )));
    }
    // An interval without its own dtstart follows the one before (2.0b's rule);
    // openleadr writes each one's dtstart.
    let mut next = event_start_s;
    let mut out = Vec::with_capacity(list.len());
    for i in list {
        let start_s = match i.find(XCAL, "dtstart") {
            Some(d) => date_time_in(d)?,
            None => next,
        };
        let duration = duration_in(i.child(XCAL, "duration")?, XCAL, "duration")?;
        let value = i
            .path(&[(EI, "signalPayload"), (EI, "payloadFloat")])?
            .parse_of(EI, "value")?;
        next = start_s.saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX));
        out.push(Interval {
            start_s,
            duration,
            value,
        });
    }
    Ok(Signal {
        name: s.text_of(EI, "signalName")?,
        kind: s.text_of(EI, "signalType")?,
        to_kw: to_kw(s)?,
        intervals: out,
    })
}

/// The factor from a signal's payload to kW: its `itemBase`'s SI scale (none: W), or 1 (kW)
/// when the signal names no unit.
fn to_kw(s: &Element) -> Result<f64, XmlError> {
    let base = ["powerReal", "powerApparent", "powerReactive"]
        .iter()
        .find_map(|n| s.find(POWER, n));
    let Some(base) = base else { return Ok(1.0) };
    let code = base.text_of(SCALE, "siScaleCode")?;
    Ok(match code.as_str() {
        "none" => 1e-3,
        "k" => 1.0,
        "M" => 1e3,
        "G" => 1e6,
        other => {
            return Err(XmlError::Invalid {
                element: "siScaleCode".into(),
                reason: format!("{other:?} is not a power scale (none, k, M, G)"),
            })
        }
    })
}

fn report_requests(m: &Element) -> Result<Vec<ReportRequest>, XmlError> {
    m.all(OADR, "oadrReportRequest")
        .map(|r| {
            let spec = r.child(EI, "reportSpecifier")?;
            let granularity = spec
                .find(XCAL, "granularity")
                .map(|g| duration_in(g, XCAL, "duration"))
                .transpose()?;
            let report_back = spec
                .find(EI, "reportBackDuration")
                .map(|g| duration_in(g, XCAL, "duration"))
                .transpose()?;
            let r_ids = spec
                .all(EI, "specifierPayload")
                .map(|p| id(p, EI, "rID"))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ReportRequest {
                request_id: id(r, EI, "reportRequestID")?,
                specifier_id: id(spec, EI, "reportSpecifierID")?,
                granularity,
                report_back,
                r_ids,
            })
        })
        .collect()
}

/// The `xcal:date-time` inside `e`, Unix seconds.
fn date_time_in(e: &Element) -> Result<i64, XmlError> {
    let t = e.text_of(XCAL, "date-time")?;
    let at = OffsetDateTime::parse(&t, &Rfc3339).map_err(|err| XmlError::Invalid {
        element: "date-time".into(),
        reason: format!("{t:?} is not an RFC 3339 time: {err}"),
    })?;
    // Rounded up to the second: a step is never dispatched before its start.
    Ok(at.unix_timestamp() + i64::from(at.nanosecond() > 0))
}

/// The duration in the child `ns:name` of `e`.
fn duration_in(e: &Element, ns: &str, name: &str) -> Result<Duration, XmlError> {
    let t = e.text_of(ns, name)?;
    parse_duration(&t).map_err(|reason| XmlError::Invalid {
        element: name.into(),
        reason,
    })
}

/// An ISO 8601 duration of weeks, days, hours, minutes and (fractional) seconds, such as
/// `PT10M` or `P1DT2H`, up to [`MAX_DURATION`]. Years and months (of no fixed length) and
/// negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("{s:?} is not an ISO 8601 duration: {why}");
    let rest = s.strip_prefix('P').ok_or_else(|| bad("no leading P"))?;
    let (mut secs, mut in_time, mut num, mut any) = (0.0f64, false, String::new(), false);
    for c in rest.chars() {
        let unit = match (c, in_time) {
            ('T', false) if num.is_empty() => {
                in_time = true;
                continue;
            }
            ('0'..='9' | '.', _) => {
                num.push(c);
                continue;
            }
            ('W', false) => 604_800.0,
            ('D', false) => 86_400.0,
            ('H', true) => 3_600.0,
            ('M', true) => 60.0,
            ('S', true) => 1.0,
            _ => return Err(bad(&format!("unexpected {c:?}"))),
        };
        let n: f64 = num.parse().map_err(|_| bad("a unit without a number"))?;
        secs += n * unit;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad("a number without a unit"));
    }
    if !secs.is_finite() || secs > MAX_DURATION.as_secs_f64() {
        return Err(bad(&format!("longer than {} s", MAX_DURATION.as_secs())));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `PT{n}S`, whole seconds (at least 1).
pub fn format_duration(d: Duration) -> String {
    format!("PT{}S", d.as_secs().max(1))
}

/// RFC 3339 in UTC, whole seconds.
pub fn format_time(unix_s: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix_s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn date_time(name: &'static str, unix_s: i64) -> Out {
    Out::el(name).child(Out::text("xcal:date-time", format_time(unix_s)))
}

fn xcal_duration(name: &'static str, d: Duration) -> Out {
    Out::el(name).child(Out::text("xcal:duration", format_duration(d)))
}

fn ei_response(code: u16, request_id: &str) -> Out {
    Out::el("ei:eiResponse")
        .child(Out::text("ei:responseCode", code.to_string()))
        .child(Out::text(
            "ei:responseDescription",
            if code == 200 { "OK" } else { "ERROR" },
        ))
        .child(Out::text("pyld:requestID", request_id))
}

impl Outgoing {
    /// The Simple-HTTP service (the URL's last segment) this message goes to.
    pub fn service(&self) -> &'static str {
        match self {
            Outgoing::QueryRegistration { .. } | Outgoing::CreatePartyRegistration { .. } => {
                "EiRegisterParty"
            }
            Outgoing::Poll { .. } => "OadrPoll",
            Outgoing::CreatedEvent { .. } => "EiEvent",
            Outgoing::RegisterReport { .. }
            | Outgoing::CreatedReport { .. }
            | Outgoing::UpdateReport { .. } => "EiReport",
            Outgoing::Response { .. } => "EiEvent",
        }
    }

    /// The whole document.
    pub fn to_xml(&self) -> String {
        document(self.element())
    }

    fn element(&self) -> Out {
        match self {
            Outgoing::QueryRegistration { request_id } => {
                Out::el("oadr:oadrQueryRegistration").child(Out::text("pyld:requestID", request_id))
            }
            Outgoing::CreatePartyRegistration {
                request_id,
                registration_id,
                ven_id,
                ven_name,
            } => Out::el("oadr:oadrCreatePartyRegistration")
                .child(Out::text("pyld:requestID", request_id))
                .child_opt(
                    registration_id
                        .as_ref()
                        .map(|r| Out::text("ei:registrationID", r)),
                )
                .child_opt(ven_id.as_ref().map(|v| Out::text("ei:venID", v)))
                .child(Out::text("oadr:oadrProfileName", "2.0b"))
                .child(Out::text("oadr:oadrTransportName", "simpleHttp"))
                .child(Out::text("oadr:oadrReportOnly", "false"))
                .child(Out::text("oadr:oadrXmlSignature", "false"))
                .child(Out::text("oadr:oadrVenName", ven_name))
                .child(Out::text("oadr:oadrHttpPullModel", "true")),
            Outgoing::Poll { ven_id } => {
                Out::el("oadr:oadrPoll").child(Out::text("ei:venID", ven_id))
            }
            Outgoing::CreatedEvent {
                ven_id,
                request_id,
                responses,
            } => created_event(ven_id, request_id, responses),
            Outgoing::RegisterReport {
                request_id,
                ven_id,
                report,
                created_s,
            } => Out::el("oadr:oadrRegisterReport")
                .child(Out::text("pyld:requestID", request_id))
                .child(usage_metadata(report, *created_s))
                .child(Out::text("ei:venID", ven_id)),
            Outgoing::CreatedReport {
                ven_id,
                request_id,
                pending,
            } => Out::el("oadr:oadrCreatedReport")
                .child(ei_response(200, request_id))
                .child(
                    pending
                        .iter()
                        .fold(Out::el("oadr:oadrPendingReports"), |o, p| {
                            o.child(Out::text("ei:reportRequestID", p))
                        }),
                )
                .child(Out::text("ei:venID", ven_id)),
            Outgoing::UpdateReport {
                request_id,
                ven_id,
                report_request_id,
                report,
                at_s,
                value_kw,
            } => update_report(
                request_id,
                ven_id,
                report_request_id,
                report,
                *at_s,
                *value_kw,
            ),
            Outgoing::Response {
                ven_id,
                request_id,
                code,
            } => Out::el("oadr:oadrResponse")
                .child(ei_response(*code, request_id))
                .child(Out::text("ei:venID", ven_id)),
        }
    }
}

fn created_event(ven_id: &str, request_id: &str, responses: &[EventResponse]) -> Out {
    let lines = responses.iter().fold(Out::el("ei:eventResponses"), |o, r| {
        o.child(
            Out::el("ei:eventResponse")
                .child(Out::text("ei:responseCode", r.code.to_string()))
                .child(Out::text(
                    "ei:responseDescription",
                    if r.code == 200 { "OK" } else { "ERROR" },
                ))
                .child(Out::text("pyld:requestID", request_id))
                .child(
                    Out::el("ei:qualifiedEventID")
                        .child(Out::text("ei:eventID", &r.event_id))
                        .child(Out::text(
                            "ei:modificationNumber",
                            r.modification.to_string(),
                        )),
                )
                .child(Out::text("ei:optType", r.opt.name())),
        )
    });
    Out::el("oadr:oadrCreatedEvent").child(
        Out::el("pyld:eiCreatedEvent")
            .child(ei_response(200, request_id))
            .child(lines)
            .child(Out::text("ei:venID", ven_id)),
    )
}

/// The METADATA_TELEMETRY_USAGE report: one real-power data point in kW.
fn usage_metadata(r: &UsageReport, created_s: i64) -> Out {
    let unit = Out::el("power:powerReal")
        .child(Out::text("power:itemDescription", "RealPower"))
        .child(Out::text("power:itemUnits", "W"))
        .child(Out::text("scale:siScaleCode", "k"))
        .child(
            Out::el("power:powerAttributes")
                .child(Out::text("power:hertz", "50"))
                .child(Out::text("power:voltage", "230"))
                .child(Out::text("power:ac", "true")),
        );
    let description = Out::el("oadr:oadrReportDescription")
        .child(Out::text("ei:rID", &r.r_id))
        .child(Out::el("ei:reportDataSource").child(Out::text("ei:resourceID", &r.resource_id)))
        .child(Out::text("ei:reportType", "usage"))
        .child(unit)
        .child(Out::text("ei:readingType", "Direct Read"))
        .child(
            Out::el("oadr:oadrSamplingRate")
                .child(Out::text("oadr:oadrMinPeriod", format_duration(r.period)))
                .child(Out::text("oadr:oadrMaxPeriod", format_duration(r.period)))
                .child(Out::text("oadr:oadrOnChange", "false")),
        );
    Out::el("oadr:oadrReport")
        .child(xcal_duration("xcal:duration", Duration::from_secs(3_600)))
        .child(description)
        .child(Out::text("ei:reportRequestID", "0"))
        .child(Out::text("ei:reportSpecifierID", &r.specifier_id))
        .child(Out::text("ei:reportName", "METADATA_TELEMETRY_USAGE"))
        .child(Out::text("ei:createdDateTime", format_time(created_s)))
}

fn update_report(
    request_id: &str,
    ven_id: &str,
    report_request_id: &str,
    r: &UsageReport,
    at_s: i64,
    value_kw: f64,
) -> Out {
    let interval = Out::el("ei:interval")
        .child(date_time("xcal:dtstart", at_s))
        .child(xcal_duration("xcal:duration", r.period))
        .child(
            Out::el("oadr:oadrReportPayload")
                .child(Out::text("ei:rID", &r.r_id))
                .child(
                    Out::el("ei:payloadFloat").child(Out::text("ei:value", value_kw.to_string())),
                )
                .child(Out::text(
                    "oadr:oadrDataQuality",
                    "Quality Good - Non Specific",
                )),
        );
    let report = Out::el("oadr:oadrReport")
        .child(date_time("xcal:dtstart", at_s))
        .child(xcal_duration("xcal:duration", r.period))
        .child(Out::el("strm:intervals").child(interval))
        .child(Out::text(
            "ei:eiReportID",
            format!("{}-{at_s}", r.specifier_id),
        ))
        .child(Out::text("ei:reportRequestID", report_request_id))
        .child(Out::text("ei:reportSpecifierID", &r.specifier_id))
        .child(Out::text("ei:reportName", "TELEMETRY_USAGE"))
        .child(Out::text("ei:createdDateTime", format_time(at_s)));
    Out::el("oadr:oadrUpdateReport")
        .child(Out::text("pyld:requestID", request_id))
        .child(report)
        .child(Out::text("ei:venID", ven_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("PT10M"), Ok(Duration::from_secs(600)));
        assert_eq!(
            parse_duration("P1DT1H0.5S"),
            Ok(Duration::from_secs_f64(90_000.5))
        );
        assert_eq!(parse_duration("PT0S"), Ok(Duration::ZERO));
        for bad in ["", "P", "T1M", "PT", "P1M", "PT5", "-PT1S", "PT1X", "P8W"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "PT90S");
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    }
}
