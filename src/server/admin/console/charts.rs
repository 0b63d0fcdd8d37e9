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

/// Approval latency (request to last approving vote) as a histogram.
fn latency(ms: &[i64]) -> String {
    const EDGES: [(i64, &str); 6] = [
        (60_000, "< 1 min"),
        (300_000, "1-5 min"),
        (900_000, "5-15 min"),
        (3_600_000, "15-60 min"),
        (14_400_000, "1-4 h"),
        (i64::MAX, "> 4 h"),
    ];
    let mut bins = [0u32; 6];
    for v in ms {
        let i = EDGES.iter().position(|(e, _)| v < e).unwrap_or(5);
        bins[i] += 1;
    }
    let max = bins.iter().copied().max().unwrap_or(0).max(1);
    let mut sorted = ms.to_vec();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).map_or("—".to_owned(), |m| {
        format!("{:.1} min", *m as f64 / 60_000.0)
    });
    let mut out = format!(
        "<figure><figcaption>Approval latency, last 24 h ({} approved, median {median})</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 480 140\" role=\"img\" aria-label=\"approval latency\">",
        ms.len()
    );
    for (i, ((_, label), n)) in EDGES.iter().zip(bins).enumerate() {
        let x = i as f64 * 80.0;
        let h = f64::from(n) / f64::from(max) * 100.0;
        let _ = write!(
            out,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"70\" height=\"{h:.1}\"><title>{n}</title></rect>\
             <text x=\"{x:.1}\" y=\"134\">{label}</text><text x=\"{x:.1}\" y=\"{:.1}\">{n}</text>",
            x + 2.0,
            110.0 - h,
            106.0 - h
        );
    }
    out.push_str("</svg></figure>");
    out
}

const STEPS: [&str; 4] = ["—", "propose", "prevote", "precommit"];

/// The last height/round/step each CometBFT validator key signed.
fn validators(rows: &[Value], now: i64) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>CometBFT validators</h2><table class=\"wide\" id=\"validators\"><thead><tr><th>chain</th><th>key</th>\
         <th>height</th><th>round</th><th>step</th><th>signed</th></tr></thead><tbody>",
    );
    for v in rows {
        let n = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
        let t = |k: &str| esc(v.get(k).and_then(Value::as_str).unwrap_or(""));
        let ago = (now - n("updated_ms")).max(0) / 1000;
        let _ = write!(
            out,
            "<tr><td data-label=\"chain\">{}</td><td data-label=\"key\">{}</td><td data-label=\"height\">{}</td>\
             <td data-label=\"round\">{}</td><td data-label=\"step\">{}</td><td data-label=\"signed\">{ago} s ago</td></tr>",
            t("chain_id"),
            t("key_id"),
            n("height"),
            n("round"),
            STEPS.get(n("step").clamp(0, 3) as usize).copied().unwrap_or("—"),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The overview page.
pub(super) async fn overview(ctx: &AdminContext, r: &Req, s: &Session) -> Response<Full<Bytes>> {
    let now = crate::store::now_ms();
    // Whole hours: the current one and the 23 before it.
    let since = (now.div_euclid(3_600_000) - (HOURS - 1)) * 3_600_000;
    let me = Some((s.user.as_str(), s.csrf.as_str()));
    let stats = match read(ctx, r, s, "audit.stats", json!({ "since_ms": since })).await {
        Ok(v) => v,
        Err(e) => {
            let body = format!(
                "<h1>Overview</h1><p class=\"muted\">Charts need the audit log (<code>{}</code>). \
                 See <a href=\"/console/approvals\">Approvals</a> or <a href=\"/console/keys\">Keys</a>.</p>",
                esc(e.rule())
            );
            return page(StatusCode::OK, frame("Overview", me, &body));
        }
    };
    let list = |k: &str| {
        stats
            .get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let counts = list("counts");
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
    let health = match &ctx.readiness {
        None => String::new(),
        Some(r) if !r.is_ready() => " · backends: <strong class=\"err\">starting</strong>".into(),
        Some(r) => match r.failing() {
            None => " · backends: <strong class=\"ok\">healthy</strong>".into(),
            Some(why) => format!(
                " · backends: <strong class=\"err\">failing</strong> ({})",
                esc(&why)
            ),
        },
    };
    let mut body = format!(
        "<h1>Overview</h1><p id=\"totals\">Last 24 h: <strong>{signed}</strong> signed, \
         <strong>{refused}</strong> refused · <a href=\"/console/approvals\">{pending} pending approvals</a>{health}</p>\
         <div class=\"charts\">",
    );
    for (chain, series) in per_chain.iter().take(8) {
        body.push_str(&bars(chain, series));
    }
    body.push_str(&top_rules(&rules));
    let latencies: Vec<i64> = list("approval_latency_ms")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    body.push_str(&latency(&latencies));
    body.push_str("</div>");
    body.push_str(&validators(&list("validators"), now));
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
        let svg = latency(&[30_000, 90_000, 100_000, 20_000_000]);
        assert!(svg.contains("4 approved, median 1.7 min"), "{svg}");
        let v = serde_json::json!([{"chain_id": "<c>", "key_id": "v", "height": 7, "round": 1, "step": 3, "updated_ms": 0}]);
        let table = validators(v.as_array().unwrap(), 5_000);
        assert!(
            table.contains("&lt;c&gt;") && table.contains("precommit") && table.contains("5 s ago")
        );
        assert_eq!(validators(&[], 0), "");
    }
}
