//! A small namespace-resolved XML tree, read with quick-xml's `NsReader`, and a writer.
//!
//! OpenADR payloads name the same element with a prefix in one message and through a default
//! namespace in the next (openleadr writes `<requestID xmlns="…payloads">` and
//! `<pyld:requestID>` for one element), so elements are matched by (namespace URI, local
//! name), never by the prefix written. A message is small ([`MAX_MESSAGE_BYTES`]) and read
//! whole into an [`Element`] tree; [`Element::child`] and friends turn a missing element into
//! an [`XmlError::Missing`] that names it and the element it was looked for in.

use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// The largest message read or accepted from a VTN, bytes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The deepest element nesting accepted (OpenADR's deepest is about 12).
pub const MAX_DEPTH: usize = 64;

/// `oadr`: OpenADR 2.0b.
pub const OADR: &str = "http://openadr.org/oadr-2.0b/2012/07";
/// `ei`: Energy Interoperation.
pub const EI: &str = "http://docs.oasis-open.org/ns/energyinterop/201110";
/// `pyld`: Energy Interoperation payloads.
pub const PYLD: &str = "http://docs.oasis-open.org/ns/energyinterop/201110/payloads";
/// `xcal`: iCalendar in XML.
pub const XCAL: &str = "urn:ietf:params:xml:ns:icalendar-2.0";
/// `strm`: iCalendar streams.
pub const STRM: &str = "urn:ietf:params:xml:ns:icalendar-2.0:stream";
/// `emix`: EMIX.
pub const EMIX: &str = "http://docs.oasis-open.org/ns/emix/2011/06";
/// `power`: EMIX power.
pub const POWER: &str = "http://docs.oasis-open.org/ns/emix/2011/06/power";
/// `scale`: SI scale codes.
pub const SCALE: &str = "http://docs.oasis-open.org/ns/emix/2011/06/siscale";

/// The prefixes the writer declares on the root, with their namespaces.
pub const PREFIXES: &[(&str, &str)] = &[
    ("oadr", OADR),
    ("ei", EI),
    ("pyld", PYLD),
    ("xcal", XCAL),
    ("strm", STRM),
    ("emix", EMIX),
    ("power", POWER),
    ("scale", SCALE),
];

/// What is wrong with a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed XML (or an unknown prefix or entity).
    #[error("malformed XML at byte {at}: {reason}")]
    Malformed {
        /// Byte offset.
        at: u64,
        /// The parser's words.
        reason: String,
    },
    /// Larger than [`MAX_MESSAGE_BYTES`] or deeper than [`MAX_DEPTH`].
    #[error("message too large: {0}")]
    TooLarge(String),
    /// A required element is absent.
    #[error("missing element <{element}> in <{parent}>")]
    Missing {
        /// The element looked for (local name).
        element: String,
        /// Where it was looked for.
        parent: String,
    },
    /// An element's text is not what it must be.
    #[error("element <{element}>: {reason}")]
    Invalid {
        /// The element (local name).
        element: String,
        /// What is wrong.
        reason: String,
    },
}

/// An element: its namespace, local name, children and text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    /// The namespace URI ("" when unbound).
    pub ns: String,
    /// The local name.
    pub name: String,
    /// The child elements in order.
    pub children: Vec<Element>,
    /// The text directly inside, concatenated (entities resolved).
    pub text: String,
}

impl Element {
    /// The first child `ns:name`, if any.
    pub fn find(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.ns == ns && c.name == name)
    }

    /// Every child `ns:name`.
    pub fn all<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children
            .iter()
            .filter(move |c| c.ns == ns && c.name == name)
    }

    /// The child `ns:name`, or [`XmlError::Missing`] naming it.
    pub fn child(&self, ns: &str, name: &str) -> Result<&Element, XmlError> {
        self.find(ns, name).ok_or_else(|| XmlError::Missing {
            element: name.to_owned(),
            parent: self.name.clone(),
        })
    }

    /// The descendant along `path` (each step `(ns, name)`), naming the first step missing.
    pub fn path(&self, path: &[(&str, &str)]) -> Result<&Element, XmlError> {
        path.iter()
            .try_fold(self, |e, (ns, name)| e.child(ns, name))
    }

    /// The trimmed text of the child `ns:name`; missing or empty is an error naming it.
    pub fn text_of(&self, ns: &str, name: &str) -> Result<String, XmlError> {
        let t = self.child(ns, name)?.text.trim().to_owned();
        if t.is_empty() {
            return Err(XmlError::Invalid {
                element: name.to_owned(),
                reason: "is empty".into(),
            });
        }
        Ok(t)
    }

    /// The trimmed text of the child `ns:name` when present and not empty.
    pub fn opt_text(&self, ns: &str, name: &str) -> Option<String> {
        self.find(ns, name)
            .map(|e| e.text.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    /// The text of `ns:name` parsed as `T`, naming the element when it does not parse.
    pub fn parse_of<T: std::str::FromStr>(&self, ns: &str, name: &str) -> Result<T, XmlError>
    where
        T::Err: std::fmt::Display,
    {
        let t = self.text_of(ns, name)?;
        t.parse().map_err(|e: T::Err| XmlError::Invalid {
            element: name.to_owned(),
            reason: format!("{t:?}: {e}"),
        })
    }
}

/// Parse a whole document into its root element.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(XmlError::TooLarge(format!(
            "{} bytes, the limit is {MAX_MESSAGE_BYTES}",
            bytes.len()
        )));
    }
    let mut reader = NsReader::from_reader(bytes);
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let at = reader.buffer_position();
        let malformed = |reason: String| XmlError::Malformed { at, reason };
        let (ns, event) = match reader.read_resolved_event() {
            Ok((ns, event)) => (namespace(ns), event),
            Err(e) => return Err(malformed(e.to_string())),
        };
        match event {
            Event::Start(start) => {
                let ns = ns.map_err(&malformed)?;
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooLarge(format!(
                        "nesting deeper than {MAX_DEPTH}"
                    )));
                }
                stack.push(Element {
                    ns,
                    name,
                    ..Element::default()
                });
            }
            Event::End(_) => {
                let done = stack
                    .pop()
                    .ok_or_else(|| malformed("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| malformed(e.to_string()))?;
                push_text(&mut stack, &s);
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| malformed(e.to_string()))?;
                push_text(&mut stack, &s);
            }
            Event::GeneralRef(r) => {
                let s = resolve_ref(&r).map_err(&malformed)?;
                push_text(&mut stack, &s);
            }
            Event::Eof => return Err(malformed("the document ends early".into())),
            Event::Empty(_) => unreachable!("expand_empty_elements is on"),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
}

/// A resolved namespace as a string ("" when unbound), or why it cannot be.
fn namespace(r: ResolveResult<'_>) -> Result<String, String> {
    match r {
        ResolveResult::Bound(n) => Ok(String::from_utf8_lossy(n.as_ref()).into_owned()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => {
            Err(format!("unknown prefix `{}`", String::from_utf8_lossy(&p)))
        }
    }
}

fn push_text(stack: &mut [Element], s: &str) {
    if let Some(top) = stack.last_mut() {
        top.text.push_str(s);
    }
}

fn resolve_ref(r: &quick_xml::events::BytesRef<'_>) -> Result<String, String> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(c)) => Ok(c.to_string()),
            Ok(None) | Err(_) => Err("invalid character reference".into()),
        };
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    quick_xml::escape::resolve_predefined_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| format!("unknown entity `&{name};`"))
}

/// An element to write: a prefixed name, attributes, and text or children.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    name: &'static str,
    attrs: Vec<(&'static str, String)>,
    text: Option<String>,
    children: Vec<Out>,
}

impl Out {
    /// `<name>` with children to come.
    pub fn el(name: &'static str) -> Out {
        Out {
            name,
            attrs: Vec::new(),
            text: None,
            children: Vec::new(),
        }
    }

    /// `<name>text</name>`.
    pub fn text(name: &'static str, text: impl Into<String>) -> Out {
        Out {
            text: Some(text.into()),
            ..Out::el(name)
        }
    }

    /// With an attribute.
    pub fn attr(mut self, name: &'static str, value: impl Into<String>) -> Out {
        self.attrs.push((name, value.into()));
        self
    }

    /// With a child.
    pub fn child(mut self, child: Out) -> Out {
        self.children.push(child);
        self
    }

    /// With a child when there is one.
    pub fn child_opt(self, child: Option<Out>) -> Out {
        match child {
            Some(c) => self.child(c),
            None => self,
        }
    }

    fn write(&self, out: &mut String) {
        let _ = write!(out, "<{}", self.name);
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}=\"{}\"", quick_xml::escape::escape(v.as_str()));
        }
        out.push('>');
        if let Some(t) = &self.text {
            out.push_str(&quick_xml::escape::escape(t.as_str()));
        }
        for c in &self.children {
            c.write(out);
        }
        let _ = write!(out, "</{}>", self.name);
    }
}

/// A whole `oadrPayload` document around one message, every prefix declared on the root.
pub fn document(message: Out) -> String {
    let mut root = Out::el("oadr:oadrPayload");
    for (prefix, ns) in PREFIXES {
        root.attrs.push((xmlns(prefix), (*ns).to_owned()));
    }
    let signed = Out::el("oadr:oadrSignedObject")
        .attr("oadr:Id", "oadrSignedObject")
        .child(message.attr("ei:schemaVersion", "2.0b"));
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    root.child(signed).write(&mut out);
    out
}

fn xmlns(prefix: &str) -> &'static str {
    match prefix {
        "oadr" => "xmlns:oadr",
        "ei" => "xmlns:ei",
        "pyld" => "xmlns:pyld",
        "xcal" => "xmlns:xcal",
        "strm" => "xmlns:strm",
        "emix" => "xmlns:emix",
        "power" => "xmlns:power",
        _ => "xmlns:scale",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_default_namespaces_resolve_alike() {
        let a =
            parse(format!("<p:a xmlns:p=\"{PYLD}\"><p:requestID>1</p:requestID></p:a>").as_bytes())
                .unwrap();
        let b =
            parse(format!("<a xmlns=\"{PYLD}\"><requestID>1</requestID></a>").as_bytes()).unwrap();
        assert_eq!(a.text_of(PYLD, "requestID").unwrap(), "1");
        assert_eq!(b.text_of(PYLD, "requestID").unwrap(), "1");
    }

    #[test]
    fn entities_are_resolved_and_written_back_escaped() {
        let e = parse(b"<a>x &amp; &#60;y&gt;</a>").unwrap();
        assert_eq!(e.text, "x & <y>");
        let mut s = String::new();
        Out::text("a", "x & <y>").write(&mut s);
        assert_eq!(s, "<a>x &amp; &lt;y&gt;</a>");
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        assert!(matches!(
            parse(b"<a><b></a>"),
            Err(XmlError::Malformed { .. })
        ));
        assert!(matches!(parse(b"<a>"), Err(XmlError::Malformed { .. })));
        assert!(matches!(parse(b"<x:a/>"), Err(XmlError::Malformed { .. })));
        assert!(matches!(
            parse(b"<a>&nope;</a>"),
            Err(XmlError::Malformed { .. })
        ));
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(deep.as_bytes()), Err(XmlError::TooLarge(_))));
        let e = parse(b"<a><b/></a>").unwrap();
        let err = e.child("", "c").unwrap_err();
        assert_eq!(err.to_string(), "missing element <c> in <a>");
    }
}
