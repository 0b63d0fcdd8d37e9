//! `GET /console/overview`: the last 24 hours drawn as server-rendered SVG (no script, no
//! external library): signatures and refusals per chain per hour, and the top refusal rules.
//! Counted by the database through `audit.stats` (one GROUP BY), as the session's user.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::html::{esc, frame, page};
use super::session::Session;
use super::{read, Req};
use crate::server::admin::AdminContext;

const HOURS: i64 = 24;

/// Signed and refused counts per hour bucket (0 = oldest).
type Series = [(u32, u32); HOURS as usize];

fn bars(chain: &str, series: &Series) -> String {
    let max = series.iter().map(|(s, r)| s + r).max().unwrap_or(0).max(1);
    let (w, h, bw) = (480.0, 140.0, 480.0 / HOURS as f64);
    let mut out = format!(
        "<figure><figcaption>{} · signed (green) and refused (red) per hour, last 24 h</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"{} signatures and refusals per hour\">",
        esc(chain),
        h + 16.0,
        esc(chain)
    );
    for (i, (s, r)) in series.iter().enumerate() {
        let x = i as f64 * bw;
        let hs = f64::from(*s) / f64::from(max) * h;
        let hr = f64::from(*r) / f64::from(max) * h;
        let _ = write!(
            out,
            "<rect class=\"bar-ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hs:.1}\"><title>{s} signed</title></rect>\
             <rect class=\"bar-refused\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hr:.1}\"><title>{r} refused</title></rect>",
            h - hs,
            bw - 2.0,
            h - hs - hr,
            bw - 2.0
        );
    }
    let _ = write!(out, "<text x=\"0\" y=\"{}\">−24 h</text><text x=\"{}\" y=\"{}\">now · max {max}</text></svg></figure>", h + 13.0, w - 90.0, h + 13.0);
    out
}

fn top_rules(rules: &BTreeMap<String, u32>) -> String {
    let mut top: Vec<_> = rules.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    top.truncate(8);
    let max = top.first().map_or(1, |(_, n)| **n).max(1);
    let row = 22.0;
    let mut out = format!(
        "<figure><figcaption>Top refusal rules, last 24 h</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 480 {}\" role=\"img\" aria-label=\"top refusal rules\">",
        (top.len().max(1) as f64) * row
    );
    for (i, (rule, n)) in top.iter().enumerate() {
        let y = i as f64 * row;
        let len = f64::from(**n) / f64::from(max) * 220.0;
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{:.1}\">{}</text><rect class=\"bar\" x=\"230\" y=\"{:.1}\" width=\"{len:.1}\" height=\"14\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{n}</text>",
            y + 13.0,
            esc(rule),
            y + 2.0,
            234.0 + len,
            y + 13.0
        );
    }
    if top.is_empty() {
        out.push_str("<text x=\"0\" y=\"14\">no refusals</text>");
    }
    out.push_str("</svg></figure>");
    out
}

/// The overview page.
pub(super) async fn overview(ctx: &AdminContext, r: &Req, s: &Session) -> Response<Full<Bytes>> {
    let now = crate::store::now_ms();
    // Whole hours: the current one and the 23 before it.
    let since = (now.div_euclid(3_600_000) - (HOURS - 1)) * 3_600_000;
    let me = Some((s.user.as_str(), s.csrf.as_str()));
    let counts = match read(ctx, r, s, "audit.stats", json!({ "since_ms": since })).await {
        Ok(v) => v
            .get("counts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Err(e) => {
            let body = format!(
                "<h1>Overview</h1><p class=\"muted\">Charts need the audit log (<code>{}</code>). \
                 See <a href=\"/console/approvals\">Approvals</a> or <a href=\"/console/keys\">Keys</a>.</p>",
                esc(e.rule())
            );
            return page(StatusCode::OK, frame("Overview", me, &body));
        }
    };
    let mut per_chain: BTreeMap<String, Series> = BTreeMap::new();
    let mut rules: BTreeMap<String, u32> = BTreeMap::new();
    let (mut signed, mut refused) = (0u32, 0u32);
    for c in &counts {
        let Some(chain) = c.get("chain").and_then(Value::as_str) else {
            continue;
        };
        let hour_ms = c.get("hour_ms").and_then(Value::as_i64).unwrap_or(since);
        let bucket = ((hour_ms - since) / 3_600_000).clamp(0, HOURS - 1) as usize;
        let n =
            u32::try_from(c.get("count").and_then(Value::as_i64).unwrap_or(0)).unwrap_or(u32::MAX);
        let series = per_chain
            .entry(chain.to_owned())
            .or_insert([(0, 0); HOURS as usize]);
        match c.get("decision").and_then(Value::as_str) {
            Some("signed") => {
                series[bucket].0 = series[bucket].0.saturating_add(n);
                signed = signed.saturating_add(n);
            }
            Some("refused") => {
                series[bucket].1 = series[bucket].1.saturating_add(n);
                refused = refused.saturating_add(n);
                if let Some(rule) = c.get("rule").and_then(Value::as_str) {
                    let e = rules.entry(rule.to_owned()).or_default();
                    *e = e.saturating_add(n);
                }
            }
            _ => {}
        }
    }
    let pending = ctx
        .approvals
        .pending_page(now, None, crate::approvals::MAX_PAGE)
        .map(|l| l.len())
        .unwrap_or(0);
    let mut body = format!(
        "<h1>Overview</h1><p id=\"totals\">Last 24 h: <strong>{signed}</strong> signed, \
         <strong>{refused}</strong> refused · <a href=\"/console/approvals\">{pending} pending approvals</a></p>\
         <div class=\"charts\">",
    );
    for (chain, series) in per_chain.iter().take(8) {
        body.push_str(&bars(chain, series));
    }
    body.push_str(&top_rules(&rules));
    body.push_str("</div>");
    page(StatusCode::OK, frame("Overview", me, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_escape_names_and_scale() {
        let mut s: Series = [(0, 0); HOURS as usize];
        s[3] = (10, 5);
        let svg = bars("<evm>", &s);
        assert!(svg.contains("&lt;evm&gt;") && !svg.contains("<evm>"));
        assert!(svg.contains("max 15"));
        let mut rules = BTreeMap::new();
        rules.insert("evm.value_cap".to_owned(), 3);
        rules.insert("<x>".to_owned(), 1);
        let svg = top_rules(&rules);
        assert!(svg.find("evm.value_cap") < svg.find("&lt;x&gt;"));
    }
}
