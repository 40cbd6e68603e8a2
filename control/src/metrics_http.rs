//! The daemon's metrics listener (`blit daemon --metrics ADDR:PORT`): Prometheus text at
//! `/metrics`, a status page at `/` and the JSON it polls at `/api/status`. Nothing else.
//!
//! The listener is unauthenticated, so it is read-only and bounded (docs/security.md): GET and
//! HEAD of three fixed paths; [`CONNECTIONS_MAX`] connections at once (more are closed at
//! once); a request's head must arrive within [`HEADER_READ_TIMEOUT`] and fit
//! [`REQUEST_BYTES_MAX`] with at most [`HEADERS_MAX`] headers; a connection lives at most
//! [`CONNECTION_TIME_MAX`] and serves one request (a slowloris holds one slot for seconds, not
//! forever). Every string a client chose (a session's path, its peer) is escaped: in HTML by
//! [`escape_html`], in JSON by serde_json, and the page's script writes them as text, never as
//! markup. The page loads nothing from anywhere: its script and style are inline, allowed by a
//! per-response nonce in a Content-Security-Policy that forbids every other source.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::cancel::Cancel;
use crate::metrics::{HISTORY_MAX, Metrics, Sample, SessionView};

/// Connections served at once; a further one is closed without an answer.
pub const CONNECTIONS_MAX: usize = 16;
/// Time a client has to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a request head (hyper's read buffer; its smallest allowed is 8 KiB).
pub const REQUEST_BYTES_MAX: usize = 16 << 10;
/// Headers of a request.
pub const HEADERS_MAX: usize = 32;
/// Time a connection may live, whatever it does.
pub const CONNECTION_TIME_MAX: Duration = Duration::from_secs(10);
/// How often the throughput is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` fires, and samples the throughput once a second.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, shutdown: Cancel) {
    let sampler = {
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                metrics.tick(Instant::now());
            }
        })
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, a connection reset before accept: keep serving.
                tracing::debug!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: {CONNECTIONS_MAX} connections open; closed one");
            drop(stream);
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(req, metrics).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(REQUEST_BYTES_MAX)
                .max_headers(HEADERS_MAX);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIME_MAX, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "metrics listener: {e}"),
                Err(_) => {
                    tracing::debug!(%peer, "metrics listener: connection closed after {CONNECTION_TIME_MAX:?}")
                }
            }
            drop(slot);
        });
    }
    sampler.abort();
}

/// What the three paths answer; anything else is 404, any method but GET/HEAD 405.
async fn respond(req: Request<Incoming>, metrics: Arc<Metrics>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let page = match req.uri().path() {
        "/" => Page::Status,
        "/metrics" => Page::Metrics,
        "/api/status" => Page::Json,
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics or /api/status\n".into(),
            );
        }
    };
    // A web page elsewhere must not read who transfers what through a DNS name rebound to
    // this address: the browser-facing pages answer only to an address or `localhost`.
    if matches!(page, Page::Status | Page::Json) {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        if !host.is_some_and(host_is_address) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "the status page answers only to an IP address or localhost in Host\n".into(),
            );
        }
    }
    let nonce = match nonce() {
        Ok(n) => n,
        Err(e) => {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("no random nonce: {e}\n"));
        }
    };
    // Rendering reads /proc and sysfs and may take the last reference to a session's data
    // plane (whose drop joins threads): not on the async workers.
    let nonce_page = nonce.clone();
    let body = tokio::task::spawn_blocking(move || {
        let now = Instant::now();
        match page {
            Page::Status => status_page(&metrics, now, &nonce_page),
            Page::Metrics => metrics.render_prometheus(now),
            Page::Json => status_json(&metrics, now),
        }
    })
    .await;
    let Ok(body) = body else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n".into());
    };
    let content_type = match page {
        Page::Status => "text/html; charset=utf-8",
        Page::Metrics => "text/plain; version=0.0.4; charset=utf-8",
        Page::Json => "application/json",
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    secure(&mut r, &nonce);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

#[derive(Debug, Clone, Copy)]
enum Page {
    Status,
    Metrics,
    Json,
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    secure(&mut r, "-");
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Headers every answer carries: nothing from elsewhere, no framing, no caching, no sniffing.
fn secure(r: &mut Response<Full<Bytes>>, nonce: &str) {
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Whether a Host header names an IP address or `localhost` (with or without a port), not a
/// DNS name that someone else could point at this listener.
fn host_is_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) if rest.is_empty() || rest.starts_with(':') => {
                return addr.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// 128 random bits, hex: the CSP nonce of one response.
fn nonce() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Text safe inside HTML elements and double- or single-quoted attributes.
pub fn escape_html(s: &str) -> String {
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

/// The JSON the page polls: live sessions and the throughput history.
pub fn status_json(metrics: &Metrics, now: Instant) -> String {
    let sessions: Vec<serde_json::Value> = metrics
        .sessions(now)
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "peer": s.peer,
                "direction": s.direction,
                "transport": s.transport,
                "path": s.path,
                "bytes": s.bytes,
                "files": s.files,
                "rate_bytes_per_s": s.rate_bytes_per_s,
                "age_s": s.age_s,
            })
        })
        .collect();
    let history: Vec<serde_json::Value> = metrics
        .history()
        .iter()
        .map(|h| serde_json::json!({ "t": h.at_s, "push": h.bytes_per_s[0], "pull": h.bytes_per_s[1] }))
        .collect();
    serde_json::json!({ "sessions": sessions, "history": history, "history_max": HISTORY_MAX })
        .to_string()
}

/// Plot size in SVG units.
const PLOT_W: f64 = 600.0;
const PLOT_H: f64 = 150.0;

/// The polyline points of each direction's throughput (the same arithmetic as the page's
/// script): the newest sample at the right edge, one step per second, scaled to the peak.
fn plot_points(history: &[Sample]) -> [String; 2] {
    let peak = history.iter().flat_map(|s| s.bytes_per_s).fold(1.0f64, f64::max);
    let step = PLOT_W / (HISTORY_MAX - 1) as f64;
    let n = history.len();
    std::array::from_fn(|d| {
        let mut out = String::new();
        for (i, s) in history.iter().enumerate() {
            let x = PLOT_W - (n - 1 - i) as f64 * step;
            let y = PLOT_H - s.bytes_per_s[d] / peak * (PLOT_H - 10.0);
            let _ = write!(out, "{x:.1},{y:.1} ");
        }
        out.trim_end().to_owned()
    })
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn session_row(s: &SessionView) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"path\">{}</td>\
         <td>{}</td><td>{}/s</td><td>{:.0} s</td></tr>",
        s.id,
        escape_html(&s.peer),
        s.direction,
        s.transport,
        escape_html(&s.path),
        human_bytes(s.bytes as f64),
        human_bytes(s.rate_bytes_per_s),
        s.age_s
    )
}

/// The status page, rendered with the state of `now` (so it shows something without script)
/// and refreshed by its inline script from `/api/status` every second.
pub fn status_page(metrics: &Metrics, now: Instant, nonce: &str) -> String {
    let sessions = metrics.sessions(now);
    let rows: String = sessions.iter().map(session_row).collect();
    let [push, pull] = plot_points(&metrics.history());
    PAGE.replace("{NONCE}", nonce)
        .replace("{VERSION}", &escape_html(crate::BUILD_VERSION))
        .replace("{COUNT}", &sessions.len().to_string())
        .replace("{POINTS_PUSH}", &push)
        .replace("{POINTS_PULL}", &pull)
        .replace("{HISTORY_MAX}", &HISTORY_MAX.to_string())
        .replace("{ROWS}", &rows)
}

const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>blit daemon</title>
<style nonce="{NONCE}">
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-top: .5em; }
td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }
td.path { font-family: monospace; white-space: pre; }
svg { border: 1px solid #ccc; background: #fafafa; }
.push { stroke: #1f77b4; color: #1f77b4; } .pull { stroke: #d62728; color: #d62728; }
</style></head>
<body>
<h1>blit daemon <small>{VERSION}</small></h1>
<h2>Throughput (last {HISTORY_MAX} s)</h2>
<svg id="plot" width="600" height="150" viewBox="0 0 600 150" role="img" aria-label="throughput">
<polyline id="plot-push" class="push" fill="none" stroke-width="2" points="{POINTS_PUSH}"/>
<polyline id="plot-pull" class="pull" fill="none" stroke-width="2" points="{POINTS_PULL}"/>
</svg>
<p><span class="push">&#9632;</span> push (written here) &nbsp; <span class="pull">&#9632;</span> pull (sent from here) &nbsp; peak: <span id="peak">-</span></p>
<h2>Live sessions: <span id="count">{COUNT}</span></h2>
<table><thead><tr><th>id</th><th>peer</th><th>direction</th><th>transport</th><th>path</th><th>bytes</th><th>rate</th><th>age</th></tr></thead>
<tbody id="sessions">{ROWS}</tbody></table>
<p><a href="/metrics">/metrics</a> &middot; <a href="/api/status">/api/status</a></p>
<script nonce="{NONCE}">
"use strict";
const W = 600, H = 150, MAX = {HISTORY_MAX};
function human(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (b >= 1024 && i + 1 < u.length) { b /= 1024; i++; }
  return b.toFixed(1) + " " + u[i];
}
function points(h, key, peak) {
  const step = W / (MAX - 1), n = h.length;
  return h.map((s, i) => (W - (n - 1 - i) * step).toFixed(1) + "," +
    (H - s[key] / peak * (H - 10)).toFixed(1)).join(" ");
}
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}
function render(st) {
  const peak = st.history.reduce((m, s) => Math.max(m, s.push, s.pull), 1);
  document.getElementById("plot-push").setAttribute("points", points(st.history, "push", peak));
  document.getElementById("plot-pull").setAttribute("points", points(st.history, "pull", peak));
  document.getElementById("peak").textContent = human(peak) + "/s";
  document.getElementById("count").textContent = String(st.sessions.length);
  const body = document.getElementById("sessions");
  const rows = st.sessions.map(s => {
    const tr = document.createElement("tr");
    cell(tr, String(s.id)); cell(tr, s.peer); cell(tr, s.direction); cell(tr, s.transport);
    cell(tr, s.path, "path"); cell(tr, human(s.bytes)); cell(tr, human(s.rate_bytes_per_s) + "/s");
    cell(tr, s.age_s.toFixed(0) + " s");
    return tr;
  });
  body.replaceChildren(...rows);
}
function poll() {
  fetch("/api/status", { cache: "no-store" }).then(r => r.json()).then(render).catch(() => {});
}
poll();
setInterval(poll, 1000);
</script>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::Direction;
    use blitx_storage::report::Progress;

    const HOSTILE: &str = "a/<script>alert(\"x\")</script>'\n&b";

    #[test]
    fn hostile_paths_are_escaped_on_the_page_and_in_json() {
        let t0 = Instant::now();
        let m = Metrics::new(t0, None);
        let _s = m.open_session(
            t0,
            7,
            "10.0.0.1:5<b>",
            Direction::Push,
            HOSTILE,
            Arc::new(Progress::default()),
        );
        let page = status_page(&m, t0, "n0nce");
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(
            page.contains("a/&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;\n&amp;b"),
            "{page}"
        );
        assert!(page.contains("10.0.0.1:5&lt;b&gt;"));
        // One script element only: the page's own, with its nonce.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains("<script nonce=\"n0nce\">"));
        let json = status_json(&m, t0);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["sessions"][0]["path"], HOSTILE);
        assert!(!json.contains('\n'));
    }

    #[test]
    fn plot_puts_the_newest_sample_at_the_right_edge() {
        let h = [
            Sample { at_s: 1.0, bytes_per_s: [0.0, 100.0] },
            Sample { at_s: 2.0, bytes_per_s: [50.0, 0.0] },
        ];
        let [push, pull] = plot_points(&h);
        let step = PLOT_W / (HISTORY_MAX - 1) as f64;
        assert_eq!(push, format!("{:.1},150.0 600.0,80.0", PLOT_W - step));
        assert_eq!(pull, format!("{:.1},10.0 600.0,150.0", PLOT_W - step));
        assert_eq!(plot_points(&[]), [String::new(), String::new()]);
    }

    #[test]
    fn only_addresses_and_localhost_are_hosts_of_the_page() {
        for ok in ["127.0.0.1:9100", "127.0.0.1", "[::1]:9100", "[::1]", "localhost:1", "LOCALHOST"]
        {
            assert!(host_is_address(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9100",
            "127.0.0.1.evil.example",
            "[::1",
            "[::1]x",
            "",
            "localhost.evil",
        ] {
            assert!(!host_is_address(bad), "{bad}");
        }
    }

    #[test]
    fn nonces_differ() {
        let a = nonce().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, nonce().unwrap());
    }
}
