//! OpenADR 2.0b: the node as a VEN (Virtual End Node) of a utility's VTN, over Simple HTTP
//! (pull: the VEN polls).
//!
//! - [`xml`]: a namespace-resolved tree read with quick-xml's `NsReader`, and the writer.
//! - [`messages`]: the messages a VEN exchanges, typed; a missing element is an error that
//!   names it.
//! - [`book`]: the pure core: events, opt-in or out against the site's capacity, which
//!   interval's grid request is due (time as an argument).
//! - [`store`]: the registration and the events in their own redb file.
//! - [`client`]: the HTTP(S) client and the VEN's named limits ([`client::VenLimits`]).
//!
//! The supervised actor that runs them is `runtime/openadr.rs` (`node/openadr/ven`).

pub mod book;
pub mod client;
pub mod messages;
pub mod store;
pub mod xml;
