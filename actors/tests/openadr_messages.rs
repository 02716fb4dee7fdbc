//! The OpenADR 2.0b messages against texts captured from openleadr 0.5.36 (its VTN and its
//! VEN, `tests/openadr/capture.py`), and `[openadr]` in the topology.

use std::time::Duration;

use gridvisor_actors::config;
use gridvisor_actors::io::openadr::messages::{
    EventResponse, EventStatus, Incoming, Opt, Outgoing, UsageReport,
};
use gridvisor_actors::io::openadr::xml::{self, Element, XmlError};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/openadr/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(name: &str) -> Incoming {
    Incoming::parse(fixture(name).as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn registration_answers() {
    match parse("vtn-created-party-registration-query.xml") {
        Incoming::CreatedPartyRegistration {
            response,
            registration_id,
            ven_id,
            vtn_id,
            poll,
        } => {
            assert_eq!(response.code, 200);
            assert_eq!((registration_id, ven_id), (None, None));
            assert_eq!(vtn_id, "vtn1");
            assert_eq!(poll, Some(Duration::from_secs(10)));
        }
        other => panic!("{other:?}"),
    }
    match parse("vtn-created-party-registration.xml") {
        Incoming::CreatedPartyRegistration {
            registration_id,
            ven_id,
            ..
        } => {
            assert_eq!(registration_id.as_deref(), Some("reg123"));
            assert_eq!(ven_id.as_deref(), Some("ven123"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn distribute_event_with_simple_and_load_dispatch_signals() {
    let Incoming::DistributeEvent { request_id, events } = parse("vtn-distribute-event.xml") else {
        panic!("not a distribute");
    };
    assert_eq!(request_id, "3baab6fe-13c6-4f8b-b82f-ae286306de74");
    assert_eq!(events.len(), 2);
    let simple = &events[0];
    assert_eq!(simple.id, "ev-simple");
    assert_eq!(simple.modification, 0);
    assert_eq!(simple.status, EventStatus::Far);
    assert!(simple.response_required);
    assert_eq!(simple.duration, Duration::from_secs(600));
    // 2026-12-08T00:43:26.280183Z, rounded up to the second.
    assert_eq!(simple.start_s, 1_796_690_607);
    let s = &simple.signals[0];
    assert_eq!((s.name.as_str(), s.kind.as_str()), ("simple", "level"));
    assert_eq!(s.intervals.len(), 1);
    assert_eq!(s.intervals[0].value, 2.0);
    let ld = &events[1].signals[0];
    assert_eq!(
        (ld.name.as_str(), ld.kind.as_str()),
        ("LOAD_DISPATCH", "setpoint")
    );
    assert_eq!(ld.to_kw, 1.0);
    let values: Vec<f64> = ld.intervals.iter().map(|i| i.value).collect();
    assert_eq!(values, [40.0, -20.0]);
    assert_eq!(ld.intervals[1].start_s - ld.intervals[0].start_s, 600);
    assert_eq!(ld.intervals[1].duration, Duration::from_secs(300));
}

#[test]
fn a_cancelled_event_and_a_modification() {
    let Incoming::DistributeEvent { events, .. } = parse("vtn-distribute-event-cancelled.xml")
    else {
        panic!("not a distribute");
    };
    let simple = events.iter().find(|e| e.id == "ev-simple").unwrap();
    assert_eq!(simple.status, EventStatus::Cancelled);
    assert_eq!(simple.modification, 1);
    let ld = events.iter().find(|e| e.id == "ev-ld").unwrap();
    assert_eq!(ld.status, EventStatus::Active);
}

#[test]
fn report_requests_and_answers() {
    let Incoming::RegisteredReport { response, requests } = parse("vtn-registered-report.xml")
    else {
        panic!("not a registered report");
    };
    assert!(response.ok());
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.request_id, "0b6d21d2-96f3-418a-afb1-68e4476ed8c8");
    assert_eq!(r.specifier_id, "site-usage");
    assert_eq!(r.granularity, Some(Duration::from_secs(2)));
    assert_eq!(r.report_back, Some(Duration::from_secs(2)));
    assert_eq!(r.r_ids, ["site-power"]);
    assert!(matches!(parse("vtn-updated-report.xml"), Incoming::UpdatedReport(r) if r.ok()));
    assert!(matches!(parse("vtn-response.xml"), Incoming::Response(r) if r.code == 200));
}

fn without(text: &str, element: &str) -> String {
    let open = format!("<{element}>");
    let close = format!("</{element}>");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("{open} not in the text"));
    let end = text[start..].find(&close).unwrap() + start + close.len();
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn a_missing_element_is_named() {
    let text = fixture("vtn-distribute-event.xml");
    let cases = [
        (
            "ei:eventID",
            "missing element <eventID> in <eventDescriptor>",
        ),
        (
            "ei:eventStatus",
            "missing element <eventStatus> in <eventDescriptor>",
        ),
        (
            "ei:signalName",
            "missing element <signalName> in <eiEventSignal>",
        ),
        (
            "ei:signalPayload",
            "missing element <signalPayload> in <interval>",
        ),
        (
            "ei:eiActivePeriod",
            "missing element <eiActivePeriod> in <eiEvent>",
        ),
        ("ei:vtnID", ""), // not needed by a VEN: the event is still read
    ];
    for (element, expected) in cases {
        let result = Incoming::parse(without(&text, element).as_bytes());
        match expected {
            "" => assert!(result.is_ok(), "{element}: {result:?}"),
            _ => assert_eq!(result.unwrap_err().to_string(), expected, "{element}"),
        }
    }
    let reg = fixture("vtn-created-party-registration.xml");
    let err = Incoming::parse(without(&reg, "ei:vtnID").as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing element <vtnID> in <oadrCreatedPartyRegistration>"
    );
}

#[test]
fn bad_values_and_bad_xml_are_named() {
    let text = fixture("vtn-distribute-event.xml");
    let bad = text.replacen("<ei:value>2.0</ei:value>", "<ei:value>two</ei:value>", 1);
    let err = Incoming::parse(bad.as_bytes()).unwrap_err().to_string();
    assert!(err.starts_with("element <value>: \"two\""), "{err}");
    let bad = text.replacen("<ei:eventStatus>far", "<ei:eventStatus>soon", 1);
    let err = Incoming::parse(bad.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("unknown event status \"soon\""), "{err}");
    let bad = text.replacen("PT10M", "PT10X", 1);
    let err = Incoming::parse(bad.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("<duration>") && err.contains("PT10X"), "{err}");
    let truncated = &text[..text.len() / 2];
    assert!(matches!(
        Incoming::parse(truncated.as_bytes()),
        Err(XmlError::Malformed { .. })
    ));
    let err = Incoming::parse(b"<html><body>502</body></html>").unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing element <oadrPayload> in <the document>"
    );
}

/// The elements of a tree as (namespace, name) paths, in document order.
fn shape(e: &Element, prefix: &str, out: &mut Vec<String>) {
    let here = format!("{prefix}/{{{}}}{}", e.ns, e.name);
    out.push(here.clone());
    for c in &e.children {
        shape(c, &here, out);
    }
}

fn shape_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    shape(&xml::parse(text.as_bytes()).unwrap(), "", &mut out);
    out
}

#[test]
fn written_messages_have_openleadrs_shape() {
    let poll = Outgoing::Poll {
        ven_id: "ven123".into(),
    };
    assert_eq!(shape_of(&poll.to_xml()), shape_of(&fixture("ven-poll.xml")));
    let query = Outgoing::QueryRegistration {
        request_id: "r1".into(),
    };
    assert_eq!(
        shape_of(&query.to_xml()),
        shape_of(&fixture("ven-query-registration.xml"))
    );
    let created = Outgoing::CreatedReport {
        ven_id: "ven123".into(),
        request_id: "r2".into(),
        pending: vec!["0b6d21d2".into()],
    };
    assert_eq!(
        shape_of(&created.to_xml()),
        shape_of(&fixture("ven-created-report.xml"))
    );
    let opts = Outgoing::CreatedEvent {
        ven_id: "ven123".into(),
        request_id: "r3".into(),
        responses: vec![
            EventResponse {
                event_id: "ev-simple".into(),
                modification: 0,
                opt: Opt::In,
                code: 200,
            },
            EventResponse {
                event_id: "ev-ld".into(),
                modification: 0,
                opt: Opt::Out,
                code: 200,
            },
        ],
    };
    assert_eq!(
        shape_of(&opts.to_xml()),
        shape_of(&fixture("ven-created-event.xml"))
    );
    let text = opts.to_xml();
    assert!(text.contains("<ei:optType>optOut</ei:optType>"));
}

#[test]
fn written_text_is_escaped() {
    let reg = Outgoing::CreatePartyRegistration {
        request_id: "r".into(),
        registration_id: None,
        ven_id: None,
        ven_name: "depot <7> & co".into(),
    };
    let tree = xml::parse(reg.to_xml().as_bytes()).unwrap();
    let m = &tree.children[0].children[0];
    assert_eq!(
        m.text_of(xml::OADR, "oadrVenName").unwrap(),
        "depot <7> & co"
    );
    let report = Outgoing::UpdateReport {
        request_id: "r".into(),
        ven_id: "v".into(),
        report_request_id: "q".into(),
        report: UsageReport {
            specifier_id: "s".into(),
            r_id: "site-power".into(),
            resource_id: "site".into(),
            period: Duration::from_secs(60),
        },
        at_s: 0,
        value_kw: 12.5,
    };
    let text = report.to_xml();
    assert!(text.contains("<ei:value>12.5</ei:value>"), "{text}");
    assert!(text.contains("<xcal:date-time>1970-01-01T00:00:00Z</xcal:date-time>"));
}

const SITE: &str = "[site]\nid = \"s\"\n[[substations]]\nid = \"sub\"\n\
    [[substations.segments]]\nid = \"tx\"\nrated_kw = 100\n\
    [[substations.segments.meters]]\nid = \"m\"\n\
    [[substations.segments.chargers]]\nid = \"c1\"\nmax_kw = 11\n";

/// `t.toml:line:column` of the first `needle` in `text`.
fn at(text: &str, needle: &str) -> String {
    let offset = text.find(needle).unwrap();
    let line = text[..offset].matches('\n').count() + 1;
    let column = offset - text[..offset].rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("t.toml:{line}:{column}")
}

#[test]
fn the_openadr_table_is_read_and_checked() {
    let good = format!(
        "{SITE}\n[openadr]\nvtn_url = \"http://127.0.0.1:8080/OpenADR2/Simple/2.0b\"\n\
         ven_name = \"depot\"\npoll_interval_s = 2\n\
         [openadr.simple_levels]\n0 = 0.0\n1 = -10.0\n2 = -20.0\n3 = -30.5\n"
    );
    let t = config::parse("t.toml", &good).unwrap_or_else(|e| panic!("{e}"));
    let o = t.openadr.unwrap();
    assert_eq!(o.poll_interval_s, 2.0);
    assert_eq!(o.report_interval_s, config::DEFAULT_OPENADR_REPORT_S);
    assert_eq!(o.simple_levels, Some([0.0, -10.0, -20.0, -30.5]));
    assert_eq!(
        o.store,
        std::path::PathBuf::from(config::DEFAULT_OPENADR_STORE)
    );
    assert!(config::parse("t.toml", SITE).unwrap().openadr.is_none());

    let bad = format!(
        "{SITE}\n[openadr]\nvtn_url = \"ftp://x\"\npoll_interval_s = 0.1\ncolour = 1\n\
         [openadr.simple_levels]\n0 = 0.0\n1 = \"x\"\n"
    );
    let err = config::parse("t.toml", &bad).unwrap_err().to_string();
    for needle in [
        format!(
            "{}: openadr.vtn_url: \"ftp://x\" is not an http:// or https:// URL",
            at(&bad, "\"ftp://x\"")
        ),
        "openadr.ven_name: missing required key `ven_name`".into(),
        format!(
            "{}: openadr.poll_interval_s: 0.1 is not within 1..=86400 s",
            at(&bad, "0.1")
        ),
        format!(
            "{}: openadr.colour: unknown key `colour`",
            at(&bad, "colour")
        ),
        "openadr.simple_levels.1: expected a number, found a string".into(),
        "openadr.simple_levels.2: missing required key `2`".into(),
    ] {
        assert!(err.contains(&needle), "{needle:?} not in:\n{err}");
    }
    let https = format!("{SITE}\n[openadr]\nvtn_url = \"https://vtn.example\"\nven_name = \"v\"\n");
    let err = config::parse("t.toml", &https).unwrap_err().to_string();
    assert!(err.contains("an https:// VTN needs [openadr.tls]"), "{err}");
    let plain = format!("{SITE}\n[openadr]\nvtn_url = \"http://10.1.2.3/x\"\nven_name = \"v\"\n");
    let err = config::parse("t.toml", &plain).unwrap_err().to_string();
    assert!(
        err.contains("a plain http:// VTN must be on loopback"),
        "{err}"
    );
    for ok in ["http://localhost:8000/x", "http://[::1]:8000/x"] {
        let t = format!("{SITE}\n[openadr]\nvtn_url = \"{ok}\"\nven_name = \"v\"\n");
        assert!(config::parse("t.toml", &t).is_ok(), "{ok}");
    }
    let half = format!(
        "{SITE}\n[openadr]\nvtn_url = \"https://vtn.example\"\nven_name = \"v\"\n\
         [openadr.tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\n"
    );
    let err = config::parse("t.toml", &half).unwrap_err().to_string();
    assert!(err.contains("cert and key go together"), "{err}");
}
