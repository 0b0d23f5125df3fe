//! Renderers over run summaries: Markdown (GitHub job summary), a self-contained HTML page
//! (timeline and hit-rate trend as inline SVG, no script, no network), Chrome trace-event
//! JSON (Perfetto, chrome://tracing) and an SVG status badge.
//!
//! They read only [`RunSummary`] values, which were masked before they were stored: nothing
//! here can see a secret.

use super::{bytes, ms, RunSummary};
use crate::events::Status;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn color(status: Status) -> &'static str {
    match status {
        Status::HitLocal => "#2e9e5b",
        Status::HitRemote => "#1f7a8c",
        Status::Ran => "#d9a21b",
        Status::Failed => "#d64545",
        Status::Skipped | Status::Cancelled => "#9aa0a6",
    }
}

fn why(st: &super::StepSummary) -> String {
    if st.status.is_hit() {
        return super::hit_why(st).into();
    }
    let mut parts: Vec<String> = st.reasons.iter().filter_map(|r| r["detail"].as_str().map(String::from)).collect();
    if let Some(d) = &st.detail {
        parts.push(d.clone());
    }
    parts.join("; ")
}

/// Markdown for `$GITHUB_STEP_SUMMARY`.
pub fn markdown(s: &RunSummary) -> String {
    let t = &s.totals;
    let icon = if s.result == "passed" { "✅" } else { "❌" };
    let mut o = format!(
        "### {icon} cairn: {} — {}\n\n{} steps · {} hit · {} ran · {} failed · hit rate **{:.0}%** · saved **{}** · wall {}\n\n",
        esc(&s.pipeline),
        s.result,
        t.steps,
        t.hits,
        t.ran,
        t.failed,
        t.hit_rate * 100.0,
        ms(t.saved_ms),
        ms(t.wall_ms)
    );
    o.push_str("| step | status | time | saved | why |\n|---|---|---:|---:|---|\n");
    for st in &s.steps {
        let _ = writeln!(
            o,
            "| `{}` | {} | {} | {} | {} |",
            st.name.replace('|', "\\|"),
            st.status.as_str(),
            ms(st.duration_ms),
            if st.saved_ms > 0 { ms(st.saved_ms) } else { "-".into() },
            why(st).replace('|', "\\|")
        );
    }
    if !s.critical_path.is_empty() {
        let _ = writeln!(
            o,
            "\nCritical path: {}",
            s.critical_path.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" → ")
        );
    }
    o
}

/// Chrome trace-event JSON: one complete event per step, one thread per worker lane.
pub fn trace(s: &RunSummary) -> String {
    let mut events: Vec<serde_json::Value> = vec![serde_json::json!({
        "name": "process_name", "ph": "M", "pid": 1, "args": {"name": format!("cairn {}", s.pipeline)}
    })];
    let lanes: std::collections::BTreeSet<usize> = s.steps.iter().map(|x| x.worker).collect();
    for lane in lanes {
        events.push(serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": lane, "args": {"name": format!("worker {lane}")}}));
    }
    for st in &s.steps {
        events.push(serde_json::json!({
            "name": st.name,
            "cat": st.status.as_str(),
            "ph": "X",
            "pid": 1,
            "tid": st.worker,
            "ts": st.start_ms * 1000,
            "dur": (st.end_ms.saturating_sub(st.start_ms)).max(1) * 1000,
            "args": {"status": st.status.as_str(), "reason": st.reason, "key": st.key, "saved_ms": st.saved_ms},
        }));
    }
    serde_json::to_string_pretty(&serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})).expect("json")
}

/// A shields-style SVG badge: passing/failing and the hit rate.
pub fn badge(s: &RunSummary) -> String {
    let (text, fill) = match s.result.as_str() {
        "passed" => (format!("passing · {:.0}% cached", s.totals.hit_rate * 100.0), "#2e9e5b"),
        other => (format!("{other} · {:.0}% cached", s.totals.hit_rate * 100.0), "#d64545"),
    };
    let left = "cairn";
    let lw = 8 + left.len() * 7;
    let rw = 10 + text.chars().count() * 7;
    let w = lw + rw;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="{left}: {text}"><title>{left}: {text}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{fill}"/><g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="5" y="14">{left}</text><text x="{}" y="14">{}</text></g></svg>
"##,
        lw + 5,
        esc(&text)
    )
}

/// One self-contained HTML page: the run's timeline and the hit-rate trend of recent runs
/// (`history` newest first, including `s`).
pub fn html(s: &RunSummary, history: &[RunSummary]) -> String {
    let t = &s.totals;
    let lanes: Vec<usize> = {
        let set: std::collections::BTreeSet<usize> = s.steps.iter().map(|x| x.worker).collect();
        set.into_iter().collect()
    };
    let span = s.steps.iter().map(|x| x.end_ms).max().unwrap_or(0).max(t.wall_ms).max(1);
    let (left, width, lane_h) = (110.0, 860.0, 30.0);
    let x = |ms: u64| left + width * ms as f64 / span as f64;
    let height = 40.0 + lane_h * lanes.len().max(1) as f64 + 30.0;
    let mut svg = format!(
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        left + width + 20.0
    );
    for (k, lane) in lanes.iter().enumerate() {
        let y = 30.0 + lane_h * k as f64;
        let _ = write!(svg, r##"<text x="8" y="{}" fill="#444">worker {lane}</text>"##, y + 19.0);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            left + width,
            y + lane_h,
            y + lane_h
        );
        for st in s.steps.iter().filter(|st| st.worker == *lane) {
            let x0 = x(st.start_ms);
            let w = (x(st.end_ms) - x0).max(2.0);
            let _ = write!(
                svg,
                r#"<g class="bar" data-status="{}"><rect x="{x0:.1}" y="{}" width="{w:.1}" height="{}" rx="3" fill="{}"><title>{} — {} {} ({})</title></rect>"#,
                st.status.as_str(),
                y + 4.0,
                lane_h - 8.0,
                color(st.status),
                esc(&st.name),
                st.status.as_str(),
                ms(st.duration_ms),
                esc(&why(st))
            );
            if w > 40.0 {
                let _ =
                    write!(svg, r##"<text x="{:.1}" y="{}" fill="#fff">{}</text>"##, x0 + 4.0, y + 19.0, esc(&st.name));
            }
            svg.push_str("</g>");
        }
    }
    let axis_y = 30.0 + lane_h * lanes.len().max(1) as f64 + 16.0;
    for k in 0..=4 {
        let msv = span * k / 4;
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{axis_y}" fill="#666" text-anchor="middle">{}</text>"##,
            x(msv),
            ms(msv)
        );
    }
    svg.push_str("</svg>");

    // Trend: hit rate of recent runs, oldest left.
    let runs: Vec<&RunSummary> = history.iter().rev().collect();
    let (tw, th) = (600.0, 160.0);
    let mut trend = format!(
        r#"<svg id="trend" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        tw + 60.0,
        th + 40.0
    );
    let _ = write!(
        trend,
        r##"<line x1="40" y1="10" x2="40" y2="{}" stroke="#999"/><line x1="40" y1="{}" x2="{}" y2="{}" stroke="#999"/>"##,
        th + 10.0,
        th + 10.0,
        tw + 40.0,
        th + 10.0
    );
    for pct in [0, 50, 100] {
        let y = 10.0 + th * (1.0 - pct as f64 / 100.0);
        let _ = write!(trend, r##"<text x="34" y="{:.1}" text-anchor="end" fill="#666">{pct}%</text>"##, y + 4.0);
    }
    let n = runs.len().max(1);
    let pts: Vec<(f64, f64, &RunSummary)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let px = 40.0 + if n == 1 { tw / 2.0 } else { tw * i as f64 / (n - 1) as f64 };
            (px, 10.0 + th * (1.0 - r.totals.hit_rate), *r)
        })
        .collect();
    let line: Vec<String> = pts.iter().map(|(a, b, _)| format!("{a:.1},{b:.1}")).collect();
    let _ = write!(trend, r##"<polyline fill="none" stroke="#1f7a8c" stroke-width="2" points="{}"/>"##, line.join(" "));
    for (a, b, r) in &pts {
        let fill = if r.result == "passed" { "#2e9e5b" } else { "#d64545" };
        let _ = write!(
            trend,
            r#"<circle class="run" cx="{a:.1}" cy="{b:.1}" r="4" fill="{fill}"><title>{} — {:.0}% hits, saved {}</title></circle>"#,
            esc(&r.id),
            r.totals.hit_rate * 100.0,
            ms(r.totals.saved_ms)
        );
    }
    trend.push_str("</svg>");

    let mut rows = String::new();
    for st in &s.steps {
        let _ = write!(
            rows,
            r#"<tr><td><span class="dot" style="background:{}"></span>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            color(st.status),
            esc(&st.name),
            st.status.as_str(),
            ms(st.duration_ms),
            if st.saved_ms > 0 { ms(st.saved_ms) } else { "-".into() },
            bytes(st.bytes_restored + st.bytes_stored),
            esc(&why(st))
        );
    }
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cairn run {id}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
h1{{font-size:20px;margin:0 0 4px}} .sub{{color:#666;margin-bottom:16px}}
.cards{{display:flex;gap:12px;margin:12px 0 20px}} .card{{border:1px solid #ddd;border-radius:8px;padding:10px 14px}}
.card b{{display:block;font-size:20px}} table{{border-collapse:collapse;margin-top:12px}}
td,th{{border-bottom:1px solid #eee;padding:4px 10px;text-align:left;font-size:13px}}
.dot{{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}}
.legend span{{margin-right:14px;font-size:12px}}
</style></head><body>
<h1>cairn · {pipeline} · <span id="result">{result}</span></h1>
<div class="sub">run {id}</div>
<div class="cards">
<div class="card"><b id="hit-rate">{rate:.0}%</b>hit rate</div>
<div class="card"><b>{saved}</b>time saved</div>
<div class="card"><b>{wall}</b>wall time</div>
<div class="card"><b>{hits}/{steps}</b>steps from the store</div>
</div>
<h2>Timeline</h2>
<div class="legend"><span style="color:#2e9e5b">■ hit (local)</span><span style="color:#1f7a8c">■ hit (remote)</span><span style="color:#d9a21b">■ ran</span><span style="color:#d64545">■ failed</span><span style="color:#9aa0a6">■ skipped / cancelled</span></div>
{svg}
<h2>Hit rate, recent runs</h2>
{trend}
<h2>Steps</h2>
<table><tr><th>step</th><th>status</th><th>time</th><th>saved</th><th>bytes</th><th>why</th></tr>{rows}</table>
<p class="sub">Critical path: {critical}</p>
</body></html>
"##,
        id = esc(&s.id),
        pipeline = esc(&s.pipeline),
        result = s.result,
        rate = t.hit_rate * 100.0,
        saved = ms(t.saved_ms),
        wall = ms(t.wall_ms),
        hits = t.hits,
        steps = t.steps,
        critical = esc(&s.critical_path.join(" → ")),
    )
}
