//! HTML building blocks. Every piece of data goes through [`esc`] (text and
//! attribute values) or [`url`] (query values) before it reaches a page:
//! task input, results, logs, module and queue names are all user data.

use crate::api::auth::Session;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// Escapes text for an HTML text node or a double-quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query or path value (then [`esc`] it into an attribute).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "–".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
    )
}

/// "3.2s", "4m 10s", "2h 5m".
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h {}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// A state badge; the class only ever comes from the fixed state names.
pub fn badge(state: &str) -> String {
    let class = match state {
        "queued" | "leased" | "running" | "waiting" | "succeeded" | "failed" | "cancelled" => state,
        _ => "other",
    };
    format!(
        r#"<span class="badge {class}" data-state="{s}">{s}</span>"#,
        s = esc(state)
    )
}

/// JSON text pretty-printed when it parses, as is otherwise; escaped.
pub fn json_block(text: &str) -> String {
    let pretty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string());
    format!("<pre>{}</pre>", esc(&pretty))
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1d2b3a;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header strong{margin-right:1rem}
main{padding:1rem 1.2rem;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:.5rem 0 1.2rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #ddd;padding:.5rem;max-height:24rem;overflow:auto;white-space:pre-wrap}
.badge{padding:.1rem .45rem;border-radius:.6rem;font-size:.8rem;color:#fff;background:#888}
.queued{background:#6b7b8c}.leased{background:#8250df}.running{background:#1f6feb}.succeeded{background:#1a7f37}
.failed{background:#cf222e}.cancelled{background:#9a6700}
form.inline{display:inline}form.logout{margin-left:auto}button{padding:.3rem .8rem;cursor:pointer}
.muted{color:#666}.flash{background:#fff8c5;border:1px solid #d4a72c;padding:.4rem .6rem}
";

/// A hidden form field with the session's CSRF token: every form that
/// changes something carries one.
pub fn csrf_field(session: &Session) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(session.csrf())
    )
}

/// A whole page of a viewer's session (with a logout button when logged
/// in): `title` is escaped here, `body` must already be safe HTML.
pub fn page(session: &Session, title: &str, body: &str) -> String {
    let logout = if session.logged_in {
        format!(
            r#"<form method="post" action="/logout" class="inline logout">{}<button id="logout" type="submit">Log out</button></form>"#,
            csrf_field(session)
        )
    } else {
        String::new()
    };
    page_with(&logout, title, body)
}

/// A page outside a session (login, errors).
pub fn bare_page(title: &str, body: &str) -> String {
    page_with("", title, body)
}

fn page_with(header_end: &str, title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · wasmq</title><style>{STYLE}</style></head>
<body><header><strong>wasmq</strong>
<a href="/">Overview</a><a href="/tasks">Tasks</a><a href="/modules">Modules</a><a href="/workers">Workers</a>
{header_end}</header><main><h1>{t}</h1>
{body}
</main></body></html>"#,
        t = esc(title)
    )
}

/// A table; `header` cells are static text, `rows` already safe HTML.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert!(!json_block(r#"{"a":"<img src=x onerror=alert(1)>"}"#).contains("<img"));
        assert!(!badge("<b>").contains("<b>"));
    }
}
