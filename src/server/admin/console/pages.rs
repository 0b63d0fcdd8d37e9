//! The read pages: overview, approvals (with live updates), audit (search, detail, export,
//! verify) and keys. Each reads through the admin API's own methods as the session's user, so
//! the role table decides what each person sees, and the read is audited like any other.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::html::{self, action_fields, esc, frame, page};
use super::session::Session;
use super::{read, Req};
use crate::access::roles::{self, Role};
use crate::server::admin::AdminContext;

type Page = Response<Full<Bytes>>;

/// Rows per audit page.
const AUDIT_PAGE: usize = 50;
/// Most rows in one export (a bigger log is exported in several time ranges).
pub(super) const EXPORT_MAX: usize = 10_000;

fn me(s: &Session) -> Option<(&str, &str)> {
    Some((s.user.as_str(), s.csrf.as_str()))
}

/// A refusal or failure of a read, as a page.
fn failed(s: &Session, title: &str, e: &crate::server::admin::AdminError) -> Page {
    let status = if e.rule() == "admin.role" {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    page(
        status,
        frame(
            title,
            me(s),
            &format!(
                "<h1>{}</h1><p class=\"err\" id=\"outcome\">Refused: <code>{}</code> — {}</p>",
                esc(title),
                esc(e.rule()),
                esc(e.message())
            ),
        ),
    )
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS` UTC.
pub(super) fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM` (UTC) as unix ms.
pub(super) fn parse_when(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00"));
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hh, mm) = time.split_once(':')?;
    let (hh, mm) = (hh.parse::<i64>().ok()?, mm.get(..2)?.parse::<i64>().ok()?);
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || !(1970..=9999).contains(&y)
    {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) * 1000)
}

/// `GET /console/approvals`: pending requests with their decoded intent.
pub(super) async fn approvals(ctx: &AdminContext, r: &Req, s: &Session) -> Page {
    let list = match read(ctx, r, s, "approvals.list", json!({})).await {
        Ok(v) => v,
        Err(e) => return failed(s, "Approvals", &e),
    };
    let items = list.as_array().cloned().unwrap_or_default();
    let no_labels = crate::config::Labels::default();
    let labels = ctx.console.as_ref().map_or(&no_labels, |c| &c.labels);
    let mut body = format!(
        "<h1>Pending approvals ({})</h1><p id=\"live\" class=\"muted\" data-version=\"{}\">Live: updates appear without reloading.</p>",
        items.len(),
        esc(&version_of(&list))
    );
    if items.is_empty() {
        body.push_str("<p class=\"muted\">Nothing waits for approval.</p>");
    }
    for a in &items {
        let g = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let n = |k: &str| a.get(k).and_then(Value::as_i64).unwrap_or(0);
        let approvers: Vec<String> = a
            .get("approvers")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).map(esc).collect())
            .unwrap_or_default();
        let id = esc(&g("id"));
        let _ = write!(
            body,
            "<div class=\"card approval\" data-id=\"{id}\"><h2>{chain} · key <code>{key}</code></h2>\
             <p>Requested by <code>{req}</code> · rule <code>{rule}</code> · group <code>{grp}</code> · \
             {approved} of {required} approvals{by} · expires in <span data-expires=\"{exp}\">{exp_s}</span></p>\
             <p class=\"plain\"><strong>{plain}</strong></p><div class=\"intent\">{intent}</div>\
             <form method=\"post\" action=\"/console/act\"><input type=\"hidden\" name=\"id\" value=\"{id}\">{fields}\
             <button name=\"method\" value=\"approvals.approve\" type=\"submit\">Approve</button> \
             <button name=\"method\" value=\"approvals.reject\" type=\"submit\" class=\"danger\">Reject</button></form></div>",
            chain = esc(&g("chain")),
            key = esc(&g("key_id")),
            req = esc(&g("requester")),
            rule = esc(&g("rule")),
            grp = esc(&g("group")),
            approved = n("approved"),
            required = n("required"),
            by = if approvers.is_empty() { String::new() } else { format!(" (by {})", approvers.join(", ")) },
            exp = n("expires_ms"),
            exp_s = esc(&when(n("expires_ms"))),
            plain = super::intent::plain(&g("chain"), a.get("summary").unwrap_or(&Value::Null), labels)
                .iter()
                .map(|l| esc(l))
                .collect::<Vec<_>>()
                .join("<br>"),
            intent = html::value(a.get("summary").unwrap_or(&Value::Null), 0),
            fields = action_fields(&s.csrf),
        );
    }
    page(StatusCode::OK, frame("Approvals", me(s), &body))
}

fn version_of(list: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for a in list.as_array().into_iter().flatten() {
        h.update(a.get("id").and_then(Value::as_str).unwrap_or("").as_bytes());
        h.update(
            a.get("approved")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_be_bytes(),
        );
    }
    hex::encode(&h.finalize()[..8])
}

/// `GET /console/events?version=`: a server-sent event `changed` when the pending approvals
/// differ from `version`, or a keep-alive after 20 s (the browser reconnects by itself). Reads
/// the approvals book directly (not audited, one row per poll would flood the log) after the
/// same role check as `approvals.list`.
pub(super) async fn events(ctx: &AdminContext, r: &Req, s: &Session) -> Page {
    let user_roles: Vec<Role> = match ctx.db.user(&s.user) {
        Ok(Some(u)) => u.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        _ => Vec::new(),
    };
    if !roles::allowed(&user_roles, "approvals.list") {
        return html::response(
            StatusCode::FORBIDDEN,
            "text/event-stream",
            "retry: 60000\n\n",
        );
    }
    let since = r.q("version").unwrap_or("").to_owned();
    let mut body = String::from("retry: 2000\n\n");
    for _ in 0..20 {
        let now = crate::store::now_ms();
        let list = ctx
            .approvals
            .pending_page(now, None, crate::approvals::MAX_PAGE)
            .map(|l| json!(l))
            .unwrap_or(Value::Null);
        let v = version_of(&list);
        if v != since {
            body = format!("retry: 2000\nevent: changed\ndata: {v}\n\n");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    html::response(StatusCode::OK, "text/event-stream", body)
}

/// The audit filter of the query string (the fields of `audit.query`).
fn audit_filter(r: &Req) -> serde_json::Map<String, Value> {
    let mut f = serde_json::Map::new();
    for k in ["chain", "key", "client", "decision", "rule", "method"] {
        if let Some(v) = r.q(k) {
            f.insert(k.into(), json!(v.chars().take(200).collect::<String>()));
        }
    }
    if let Some(ms) = r.q("since").and_then(parse_when) {
        f.insert("since_ms".into(), json!(ms));
    }
    if let Some(ms) = r.q("until").and_then(parse_when) {
        f.insert("until_ms".into(), json!(ms));
    }
    f.insert("newest_first".into(), json!(true));
    f
}

fn audit_query_string(r: &Req, extra: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for k in [
        "since", "until", "chain", "key", "client", "decision", "rule", "method",
    ] {
        if let Some(v) = r.q(k) {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    format!(
        "{q}{}{extra}",
        if q.is_empty() || extra.is_empty() {
            ""
        } else {
            "&"
        }
    )
}

/// `GET /console/audit`: search, page (newest first), row detail.
pub(super) async fn audit(ctx: &AdminContext, r: &Req, s: &Session) -> Page {
    let mut filter = audit_filter(r);
    let detail = r.q("seq").and_then(|v| v.parse::<i64>().ok());
    if let Some(seq) = detail {
        filter = serde_json::Map::new();
        filter.insert("after_seq".into(), json!(seq - 1));
        filter.insert("before_seq".into(), json!(seq + 1));
    } else {
        if let Some(b) = r.q("before").and_then(|v| v.parse::<i64>().ok()) {
            filter.insert("before_seq".into(), json!(b));
        }
        filter.insert("limit".into(), json!(AUDIT_PAGE));
    }
    let rows = match read(ctx, r, s, "audit.query", json!({"filter": filter})).await {
        Ok(v) => v.as_array().cloned().unwrap_or_default(),
        Err(e) => return failed(s, "Audit", &e),
    };
    let mut body = String::from("<h1>Audit log</h1>");
    let input = |k: &str, label: &str| {
        format!(
            "<input name=\"{k}\" placeholder=\"{label}\" value=\"{}\" aria-label=\"{label}\">",
            esc(r.q(k).unwrap_or(""))
        )
    };
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/console/audit\" class=\"filters\">{}{}{}{}{}{}{}{}\
         <button type=\"submit\">Search</button></form>\
         <p><a id=\"export-jsonl\" href=\"/console/audit/export?{q}{amp}format=jsonl\">Export JSON Lines</a> · \
         <a id=\"export-csv\" href=\"/console/audit/export?{q}{amp}format=csv\">Export CSV</a> (at most {EXPORT_MAX} rows)</p>\
         <form method=\"post\" action=\"/console/audit/verify\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Verify the hash chain</button></form>",
        input("since", "since YYYY-MM-DD"),
        input("until", "until YYYY-MM-DD"),
        input("chain", "chain"),
        input("key", "key"),
        input("client", "client"),
        input("decision", "decision"),
        input("rule", "rule"),
        input("method", "method"),
        q = esc(&audit_query_string(r, "")),
        amp = if audit_query_string(r, "").is_empty() { "" } else { "&amp;" },
        csrf = esc(&s.csrf),
    );
    if detail.is_some() {
        for row in &rows {
            body.push_str(&format!(
                "<div class=\"card\" id=\"row-detail\">{}</div>",
                html::value(row, 0)
            ));
        }
        return page(StatusCode::OK, frame("Audit row", me(s), &body));
    }
    body.push_str(
        "<table class=\"wide\" id=\"audit-rows\"><thead><tr><th>seq</th><th>time (UTC)</th><th>client</th>\
         <th>key</th><th>chain</th><th>method</th><th>decision</th><th>rule</th></tr></thead><tbody>",
    );
    for row in &rows {
        let g = |k: &str| esc(row.get(k).and_then(Value::as_str).unwrap_or(""));
        let seq = row.get("seq").and_then(Value::as_i64).unwrap_or(0);
        let _ = write!(
            body,
            "<tr><td data-label=\"seq\"><a href=\"/console/audit?seq={seq}\">{seq}</a></td>\
             <td data-label=\"time\">{}</td><td data-label=\"client\">{}</td><td data-label=\"key\">{}</td>\
             <td data-label=\"chain\">{}</td><td data-label=\"method\">{}</td>\
             <td data-label=\"decision\" class=\"d-{d}\">{d}</td><td data-label=\"rule\">{}</td></tr>",
            esc(&when(row.get("ts_ms").and_then(Value::as_i64).unwrap_or(0))),
            g("client"),
            g("key_id"),
            g("chain"),
            g("method"),
            g("rule"),
            d = g("decision"),
        );
    }
    body.push_str("</tbody></table>");
    if rows.len() == AUDIT_PAGE {
        if let Some(last) = rows
            .last()
            .and_then(|r| r.get("seq"))
            .and_then(Value::as_i64)
        {
            let q = audit_query_string(r, &format!("before={last}"));
            let _ = write!(
                body,
                "<p><a id=\"older\" href=\"/console/audit?{}\">Older rows</a></p>",
                esc(&q)
            );
        }
    }
    page(StatusCode::OK, frame("Audit", me(s), &body))
}

/// `GET /console/audit/export?format=jsonl|csv`: the rows matching the filter.
pub(super) async fn audit_export(ctx: &AdminContext, r: &Req, s: &Session) -> Page {
    let mut filter = audit_filter(r);
    filter.insert("limit".into(), json!(EXPORT_MAX));
    let rows = match read(ctx, r, s, "audit.query", json!({"filter": filter})).await {
        Ok(v) => v.as_array().cloned().unwrap_or_default(),
        Err(e) => return failed(s, "Audit export", &e),
    };
    let csv = r.q("format") == Some("csv");
    let mut out = String::new();
    if csv {
        out.push_str("seq,ts_ms,request_id,client,key_id,chain,method,decision,rule,reason,tx_hash,summary,hash\n");
        for row in &rows {
            let cells: Vec<String> = [
                "seq",
                "ts_ms",
                "request_id",
                "client",
                "key_id",
                "chain",
                "method",
                "decision",
                "rule",
                "reason",
                "tx_hash",
                "summary",
                "hash",
            ]
            .iter()
            .map(|k| csv_cell(row.get(*k).unwrap_or(&Value::Null)))
            .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
    } else {
        for row in &rows {
            out.push_str(&row.to_string());
            out.push('\n');
        }
    }
    let (ty, ext) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "jsonl")
    };
    let mut resp = html::response(StatusCode::OK, ty, out);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!(
        "attachment; filename=\"keyguard-audit.{ext}\""
    )) {
        resp.headers_mut()
            .insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// One CSV cell (RFC 4180 quoting; a leading `=+-@` is prefixed with `'` so a spreadsheet
/// does not run a formula written into the log by a client).
fn csv_cell(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let s = if s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `POST /console/audit/verify`: `audit.verify`, shown.
pub(super) async fn audit_verify(ctx: &AdminContext, r: &Req, s: &Session) -> Page {
    let body = match read(ctx, r, s, "audit.verify", json!({})).await {
        Ok(v) => format!(
            "<h1>Audit chain verified</h1><p class=\"ok\" id=\"outcome\">Intact: {} rows, head <code>{}</code>.</p>",
            v.get("rows").and_then(Value::as_u64).unwrap_or(0),
            esc(v.get("head").and_then(Value::as_str).unwrap_or(""))
        ),
        Err(e) => format!(
            "<h1>Audit chain</h1><p class=\"err\" id=\"outcome\">{}: {}</p>",
            esc(e.rule()),
            esc(e.message())
        ),
    };
    page(
        StatusCode::OK,
        frame(
            "Audit verify",
            me(s),
            &format!("{body}<p><a href=\"/console/audit\">Back</a></p>"),
        ),
    )
}

/// `GET /console/keys`: the kill switch per key and for all.
pub(super) async fn keys(ctx: &AdminContext, r: &Req, s: &Session) -> Page {
    let status = match read(ctx, r, s, "keys.status", json!({})).await {
        Ok(v) => v,
        Err(e) => return failed(s, "Keys", &e),
    };
    let all_off = status
        .get("all_disabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let disabled: Vec<String> = status
        .get("disabled")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let fields = action_fields(&s.csrf);
    let options = format!(
        "<datalist id=\"key-ids\">{}</datalist>",
        ctx.key_list
            .iter()
            .map(|k| format!("<option value=\"{}\">", esc(&k.id)))
            .collect::<String>()
    );
    let mut body =
        format!(
        "<h1>Keys</h1><p id=\"all-status\">All keys: <strong class=\"{c}\">{t}</strong>{kf}</p>",
        c = if all_off { "err" } else { "ok" },
        t = if all_off { "signing stopped" } else { "signing allowed" },
        kf = if status.get("kill_file_present").and_then(Value::as_bool) == Some(true) {
            " · the emergency kill file is present"
        } else {
            ""
        }
    );
    body.push_str("<table class=\"wide\" id=\"keys\"><thead><tr><th>key</th><th>backend</th><th>scheme</th><th>public key / address</th><th>policy</th><th>status</th></tr></thead><tbody>");
    let mut listed = std::collections::BTreeSet::new();
    for k in ctx.key_list.iter() {
        listed.insert(k.id.clone());
        let off = all_off || disabled.contains(&k.id);
        let _ = write!(
            body,
            "<tr><td data-label=\"key\"><code>{}</code></td><td data-label=\"backend\">{}</td><td data-label=\"scheme\">{}</td>\
             <td data-label=\"public\"><code>{}</code></td><td data-label=\"policy\">{}</td>\
             <td data-label=\"status\" class=\"{}\">{}</td></tr>",
            esc(&k.id),
            esc(&k.backend),
            esc(&k.scheme),
            esc(&k.public),
            esc(&k.policy),
            if off { "err" } else { "ok" },
            if off { "disabled" } else { "enabled" },
        );
    }
    for k in disabled.iter().filter(|k| !listed.contains(*k)) {
        let _ = write!(body, "<tr><td><code>{}</code></td><td></td><td></td><td></td><td></td><td class=\"err\">disabled</td></tr>", esc(k));
    }
    body.push_str("</tbody></table>");
    let _ = write!(
        body,
        "<div class=\"card\"><h2>Kill switch</h2><p class=\"muted\">Stopping is immediate; enabling needs \
         a second admin making the same request.</p>\
         <form method=\"post\" action=\"/console/act\" id=\"kill-form\"><input name=\"key\" list=\"key-ids\" placeholder=\"key id\" aria-label=\"key id\">{options}\
         <label><input type=\"checkbox\" name=\"all\" value=\"true\"> all keys</label> {fields}\
         <button name=\"method\" value=\"keys.disable\" class=\"danger\" type=\"submit\">Disable</button> \
         <button name=\"method\" value=\"keys.enable\" type=\"submit\">Enable</button></form></div>\
         <div class=\"card\"><h2>Policy</h2><form method=\"post\" action=\"/console/act\">{fields}\
         <button name=\"method\" value=\"policy.reload\" type=\"submit\">Reload policy</button></form></div>"
    );
    page(StatusCode::OK, frame("Keys", me(s), &body))
}

pub(super) use super::charts::overview;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(parse_when("2026-12-05T01:30"), Some(1_796_434_200_000));
        assert_eq!(when(1_796_434_200_000), "2026-12-05 01:30:00");
        assert_eq!(parse_when("2024-02-29"), Some(1_709_164_800_000));
        for bad in ["", "2024-13-01", "x", "2024-01-01T25:00", "99999-01-01"] {
            assert_eq!(parse_when(bad), None, "{bad}");
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_cell(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell(&json!("=HYPERLINK(1)")), "'=HYPERLINK(1)");
        assert_eq!(csv_cell(&json!(-5)), "-5");
        assert_eq!(csv_cell(&Value::Null), "");
    }
}
