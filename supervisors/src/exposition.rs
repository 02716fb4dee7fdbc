//! Writing metrics for a scrape: the Prometheus text format (0.0.4) and OpenMetrics 1.0,
//! chosen from the scrape's `Accept` header.
//!
//! [`crate::SupervisionMetrics`] writes its table straight into the output; families kept in
//! a `prometheus::Registry` go through [`encode_families`]. One encoder for both formats
//! keeps their escaping and number formatting identical.
//!
//! ```
//! use gridvisor_supervisors::exposition::{self, Format};
//!
//! let registry = prometheus::Registry::new();
//! let c = prometheus::IntCounter::new("jobs_total", "Jobs done").unwrap();
//! registry.register(Box::new(c.clone())).unwrap();
//! c.inc();
//! let format = Format::negotiate(Some("application/openmetrics-text;version=1.0.0"));
//! let mut out = String::new();
//! exposition::encode_families(&registry.gather(), format, &mut out);
//! exposition::finish(format, &mut out);
//! assert_eq!(out, "# TYPE jobs counter\n# HELP jobs Jobs done\njobs_total 1\n# EOF\n");
//! ```

use std::fmt::Write as _;

use prometheus::proto::{LabelPair, MetricFamily, MetricType};

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Text,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format a scraper asked for in its `Accept` header: OpenMetrics when it ranks
    /// `application/openmetrics-text` above `text/plain` (by q-value, as Prometheus's own
    /// scrape header does), otherwise the text format, which every scraper reads.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut open_metrics = 0.0f32;
        let mut text = 0.0f32;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            for p in parts {
                if let Some(v) = p.trim().strip_prefix("q=") {
                    // An unreadable q-value ranks the range last rather than failing the
                    // scrape: the text format is always a correct answer.
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            match media.as_str() {
                "application/openmetrics-text" => open_metrics = open_metrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open_metrics > text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The end of an exposition: OpenMetrics' `# EOF` line (nothing in the text format).
pub fn finish(format: Format, out: &mut String) {
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

fn type_name(format: Format, kind: MetricType) -> &'static str {
    match kind {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => match format {
            Format::Text => "untyped",
            Format::OpenMetrics => "unknown",
        },
    }
}

/// The family name in metadata lines: OpenMetrics names a counter without its `_total`.
fn family_name(format: Format, name: &str, kind: MetricType) -> &str {
    match (format, kind) {
        (Format::OpenMetrics, MetricType::COUNTER) => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

/// Write a family's `# HELP` and `# TYPE` lines.
pub fn write_family_header(
    out: &mut String,
    format: Format,
    name: &str,
    help: &str,
    kind: MetricType,
) {
    let base = family_name(format, name, kind);
    match format {
        Format::Text => {
            out.push_str("# HELP ");
            out.push_str(base);
            out.push(' ');
            escape(out, help, false);
            out.push_str("\n# TYPE ");
            out.push_str(base);
            out.push(' ');
            out.push_str(type_name(format, kind));
            out.push('\n');
        }
        Format::OpenMetrics => {
            out.push_str("# TYPE ");
            out.push_str(base);
            out.push(' ');
            out.push_str(type_name(format, kind));
            out.push_str("\n# HELP ");
            out.push_str(base);
            out.push(' ');
            escape(out, help, true);
            out.push('\n');
        }
    }
}

/// Escape `s` into `out`: backslash and newline always, the double quote when `quote`.
fn escape(out: &mut String, s: &str, quote: bool) {
    if !s.bytes().any(|b| b == b'\\' || b == b'\n' || b == b'"') {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Write a label value, escaped (both formats escape the same three characters).
pub fn write_label_value(out: &mut String, value: &str) {
    escape(out, value, true);
}

/// Write a sample value: `+Inf`, `-Inf` and `NaN` spelled as both formats want them.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Write a bucket bound or quantile as a label value; OpenMetrics wants a float's canonical
/// spelling there (`1.0`, not `1`).
fn write_bound(out: &mut String, format: Format, v: f64) {
    write_value(out, v);
    if format == Format::OpenMetrics && v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        out.push_str(".0");
    }
}

fn write_sample(
    out: &mut String,
    format: Format,
    name: &str,
    suffix: &str,
    labels: &[LabelPair],
    extra: Option<(&str, f64)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        for l in labels {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(l.name());
            out.push_str("=\"");
            write_label_value(out, l.value());
            out.push('"');
        }
        if let Some((name, bound)) = extra {
            if !first {
                out.push(',');
            }
            out.push_str(name);
            out.push_str("=\"");
            write_bound(out, format, bound);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// Append `families` (from `prometheus::Registry::gather`) to `out` in `format`.
pub fn encode_families(families: &[MetricFamily], format: Format, out: &mut String) {
    for f in families {
        if f.get_metric().is_empty() {
            continue;
        }
        let kind = f.get_field_type();
        let name = f.name();
        write_family_header(out, format, name, f.help(), kind);
        // OpenMetrics counter samples end in `_total`; a counter registered without the
        // suffix gets it there (the text format keeps the name as registered).
        let counter_suffix = match (format, kind) {
            (Format::OpenMetrics, MetricType::COUNTER) if !name.ends_with("_total") => "_total",
            _ => "",
        };
        for m in f.get_metric() {
            let labels = m.get_label();
            match kind {
                MetricType::COUNTER => {
                    let v = m.get_counter().get_value();
                    write_sample(out, format, name, counter_suffix, labels, None, v);
                }
                MetricType::GAUGE => {
                    let v = m.get_gauge().get_value();
                    write_sample(out, format, name, "", labels, None, v);
                }
                MetricType::UNTYPED => {
                    // Deprecated in the crate's plain model, but still what it gathers for
                    // untyped metrics (its own text encoder reads it the same way).
                    #[allow(deprecated)]
                    let v = m.get_untyped().get_value();
                    write_sample(out, format, name, "", labels, None, v);
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let mut saw_inf = false;
                    for b in h.get_bucket() {
                        saw_inf |= b.upper_bound() == f64::INFINITY;
                        let le = Some(("le", b.upper_bound()));
                        let n = b.cumulative_count() as f64;
                        write_sample(out, format, name, "_bucket", labels, le, n);
                    }
                    let count = h.get_sample_count() as f64;
                    if !saw_inf {
                        let le = Some(("le", f64::INFINITY));
                        write_sample(out, format, name, "_bucket", labels, le, count);
                    }
                    let sum = h.get_sample_sum();
                    write_sample(out, format, name, "_sum", labels, None, sum);
                    write_sample(out, format, name, "_count", labels, None, count);
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        let extra = Some(("quantile", q.quantile()));
                        write_sample(out, format, name, "", labels, extra, q.value());
                    }
                    let sum = s.sample_sum();
                    write_sample(out, format, name, "_sum", labels, None, sum);
                    let count = s.sample_count() as f64;
                    write_sample(out, format, name, "_count", labels, None, count);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_by_q_value() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        // Prometheus 2.x's default scrape header.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                    version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        let text_first = "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5";
        assert_eq!(Format::negotiate(Some(text_first)), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=bogus")),
            Format::Text
        );
    }

    #[test]
    fn text_and_openmetrics_agree_with_the_prometheus_crate() {
        let registry = prometheus::Registry::new();
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new("x_total", "An \"x\"\\ with\nnewline"),
            &["path"],
        )
        .unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["a\"b\\c\nd"]).inc_by(3);
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("lat_seconds", "Latency").buckets(vec![0.5, 1.0]),
        )
        .unwrap();
        registry.register(Box::new(h.clone())).unwrap();
        h.observe(0.7);
        let g = prometheus::Gauge::new("g", "A gauge").unwrap();
        registry.register(Box::new(g.clone())).unwrap();
        g.set(2.5);

        let families = registry.gather();
        let mut ours = String::new();
        encode_families(&families, Format::Text, &mut ours);
        let mut theirs = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut theirs)
            .unwrap();
        assert_eq!(ours, String::from_utf8(theirs).unwrap());

        // The crate writes `-inf`; both formats spell it `-Inf`.
        g.set(f64::NEG_INFINITY);
        let families = registry.gather();
        let mut om = String::new();
        encode_families(&families, Format::OpenMetrics, &mut om);
        finish(Format::OpenMetrics, &mut om);
        assert!(om.contains("# TYPE x counter\n# HELP x An \\\"x\\\"\\\\ with\\nnewline\n"));
        assert!(om.contains("x_total{path=\"a\\\"b\\\\c\\nd\"} 3\n"));
        assert!(om.contains("lat_seconds_bucket{le=\"1.0\"} 1\n"));
        assert!(om.contains("lat_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(om.contains("g -Inf\n"));
        assert!(om.ends_with("# EOF\n"));
    }
}
