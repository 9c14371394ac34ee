//! The output of a run: a table on stdout (each figure with its ratio to raw and to tonic),
//! `results.json`, `results.md` (the same table and the goals of issues 21 and 9, for the docs),
//! `goals.json` (issue 21's goals: `goals.rs`) and
//! `ratios.svg` / `ratios-split.svg` (each figure relative to raw, per scenario).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::System;
use crate::measure::Figures;

pub(crate) struct Row {
    pub system: System,
    pub scenario: &'static str,
    pub placement: &'static str,
    pub f: Figures,
}

impl Row {
    /// The system as `results.json` names it; the token set-up is `peerwire-tls` with a variant.
    fn json_system(&self) -> (&'static str, Option<&'static str>) {
        match self.system {
            System::PeerwireTlsToken => ("peerwire-tls", Some("server-tls+token")),
            s => (s.name(), None),
        }
    }

    /// The same scenario and placement measured on `system`; for raw, the batched raw where
    /// naive raw has no such row (16 in flight: the naive row is `inflight16-64B-naive`).
    fn reference<'a>(&self, rows: &'a [Row], system: System) -> Option<&'a Row> {
        let find = |system| {
            rows.iter().find(|r| {
                r.system == system && r.scenario == self.scenario && r.placement == self.placement
            })
        };
        find(system).or_else(|| (system == System::Raw).then(|| find(System::RawBatched))?)
    }

    /// This figure relative to `other`: times for latency and memory (lower is better), a
    /// fraction for throughput (higher is better).
    fn ratio(&self, other: Option<&Row>) -> String {
        let (a, b) = match other {
            Some(o) if o.system != self.system => (&self.f, &o.f),
            _ => return "-".into(),
        };
        let div = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        if let Some(p50) = div(a.p50_us, b.p50_us) {
            return match div(a.p99_us, b.p99_us) {
                Some(p99) => format!("{p50:.2}x/{p99:.2}x"),
                None => format!("{p50:.2}x"),
            };
        }
        if let Some(m) = div(a.bytes_per_conn, b.bytes_per_conn) {
            return format!("{m:.2}x");
        }
        div(a.gbps, b.gbps)
            .or_else(|| div(a.msgs_per_s, b.msgs_per_s))
            .map_or_else(|| "-".into(), |r| format!("{r:.2}"))
    }

    /// The figure relative to raw with longer = better (raw = 1), for the chart.
    fn gain_over_raw(&self, rows: &[Row]) -> Option<f64> {
        let raw = &self.reference(rows, System::Raw)?.f;
        let inv = |x: Option<f64>, y: Option<f64>| Some(y? / x?);
        inv(self.f.p50_us, raw.p50_us)
            .or_else(|| inv(self.f.bytes_per_conn, raw.bytes_per_conn))
            .or_else(|| Some(self.f.gbps? / raw.gbps?))
            .or_else(|| Some(self.f.msgs_per_s? / raw.msgs_per_s?))
            .filter(|r| r.is_finite() && *r > 0.0)
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        None => String::new(),
        Some(v) if decimals == 0 => {
            // Thousands separated with commas: 123,456.
            let s = format!("{v:.0}");
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(v) => format!("{v:.decimals$}"),
    }
}

const HEADER: [&str; 10] = [
    "system",
    "scenario",
    "placement",
    "p50 µs",
    "p99 µs",
    "GB/s",
    "msgs/s",
    "B/conn",
    "vs raw",
    "vs tonic",
];

fn cells(r: &Row, rows: &[Row]) -> [String; 10] {
    let scenario = match r.system {
        System::PeerwireTlsToken => format!("{} (server TLS + token)", r.scenario),
        _ => r.scenario.to_string(),
    };
    let msgs = match r.f.dropped {
        Some(d) if d > 0 => format!("{} ({d} lost)", num(r.f.msgs_per_s, 0)),
        _ => num(r.f.msgs_per_s, 0),
    };
    [
        r.json_system().0.to_string(),
        scenario,
        r.placement.to_string(),
        num(r.f.p50_us, 1),
        num(r.f.p99_us, 1),
        num(r.f.gbps, 2),
        msgs,
        num(r.f.bytes_per_conn, 0),
        r.ratio(r.reference(rows, System::Raw)),
        r.ratio(r.reference(rows, System::Tonic)),
    ]
}

fn text_table(rows: &[Row]) -> String {
    let all: Vec<[String; 10]> = rows.iter().map(|r| cells(r, rows)).collect();
    let width = |i: usize| {
        all.iter()
            .map(|c| c[i].chars().count())
            .chain([HEADER[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..HEADER.len()).map(width).collect();
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i < 3 {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
                s.push_str("  ");
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&HEADER.map(String::from)) + "\n";
    for c in &all {
        out += &line(c);
        out.push('\n');
    }
    out
}

const LEGEND: &str = "vs raw / vs tonic: latency (p50/p99), connect and memory in times the \
reference (lower is better); throughput as a fraction of it (higher is better).";

fn markdown_table(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEADER.join(" | "));
    out += &format!("|{}\n", "---|".repeat(HEADER.len()));
    for r in rows {
        out += &format!("| {} |\n", cells(r, rows).join(" | "));
    }
    out
}

/// A goal of issue 9 (same-cpu placement): what, the measured figure, its unit, and the test.
type Goal = (&'static str, Option<f64>, &'static str, fn(f64) -> bool);

type Field = fn(&Figures) -> Option<f64>;

fn goals(rows: &[Row]) -> Vec<Goal> {
    use System::{Peerwire, PeerwireExe, PeerwireTls, Raw, Tonic};
    let fig = |system: System, scenario: &str, field: Field| {
        rows.iter()
            .find(|r| r.system == system && r.scenario == scenario && r.placement == "same-cpu")
            .and_then(|r| field(&r.f))
    };
    let rel =
        |a, b, scenario, field: Field| Some(fig(a, scenario, field)? / fig(b, scenario, field)?);
    let (p50, p99): (Field, Field) = (|f| f.p50_us, |f| f.p99_us);
    let (gbps, rate): (Field, Field) = (|f| f.gbps, |f| f.msgs_per_s);
    let (rtt, inflight, stream) = ("rtt-64B", "inflight16-64B", "stream-1MiB");
    let kib = fig(Peerwire, "idle-conn-mem", |f| f.bytes_per_conn).map(|b| b / 1024.0);
    let fanout = fig(Peerwire, "fanout8", rate).map(|r| r / 1000.0);
    // Issue 9's goal was set against the naive raw client (two reads and a write per message),
    // now the row `inflight16-64B-naive`; issue 21's goal compares with raw-batched.
    let naive_inflight = fig(Peerwire, inflight, rate)
        .zip(fig(Raw, "inflight16-64B-naive", rate))
        .map(|(a, b)| a / b);
    // One goal per line: a table.
    #[rustfmt::skip]
    let goals: Vec<Goal> = vec![
        ("peerwire 64 B p50 <= 1.6x raw", rel(Peerwire, Raw, rtt, p50), "x raw", |v| v <= 1.6),
        ("peerwire 64 B p99 <= 2.0x raw", rel(Peerwire, Raw, rtt, p99), "x raw", |v| v <= 2.0),
        ("peerwire 16 in flight >= 3x tonic", rel(Peerwire, Tonic, inflight, rate), "x tonic", |v| v >= 3.0),
        ("peerwire 16 in flight >= 0.9 of naive raw", naive_inflight, "of naive raw", |v| v >= 0.9),
        ("peerwire 1 MiB >= 0.8 of raw", rel(Peerwire, Raw, stream, gbps), "of raw", |v| v >= 0.8),
        ("peerwire + exe rule 64 B p50 <= 1.25x peerwire", rel(PeerwireExe, Peerwire, rtt, p50), "x peerwire", |v| v <= 1.25),
        ("peerwire-tls 64 B p50 <= 1.25x peerwire", rel(PeerwireTls, Peerwire, rtt, p50), "x peerwire", |v| v <= 1.25),
        ("peerwire-tls 1 MiB >= 1.6 GB/s", fig(PeerwireTls, stream, gbps), "GB/s", |v| v >= 1.6),
        ("server memory <= 16 KiB per idle connection", kib, "KiB", |v| v <= 16.0),
        ("fan-out to 8 clients >= 200k events/s", fanout, "k events/s", |v| v >= 200.0),
    ];
    goals
}

fn goals_table(rows: &[Row]) -> String {
    let mut out = "| goal (same-cpu) | measured | met |\n|---|---|---|\n".to_string();
    for (what, measured, unit, met) in goals(rows) {
        let (measured, met) = match measured {
            Some(v) => (format!("{v:.2} {unit}"), if met(v) { "yes" } else { "no" }),
            None => ("not measured".into(), "-"),
        };
        out += &format!("| {what} | {measured} | {met} |\n");
    }
    out
}

#[derive(Serialize)]
struct JsonRow {
    system: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
    scenario: &'static str,
    placement: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gbps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msgs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events_dropped: Option<u64>,
}

fn json(rows: &[Row], seal_rate: f64) -> anyhow::Result<String> {
    let round = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
    let list: Vec<JsonRow> = rows
        .iter()
        .map(|r| {
            let (system, variant) = r.json_system();
            JsonRow {
                system,
                variant,
                scenario: r.scenario,
                placement: r.placement,
                p50_us: round(r.f.p50_us),
                p99_us: round(r.f.p99_us),
                gbps: round(r.f.gbps),
                msgs_per_s: round(r.f.msgs_per_s),
                bytes_per_conn: round(r.f.bytes_per_conn),
                events_dropped: r.f.dropped,
            }
        })
        .chain([JsonRow {
            system: "aes-128-gcm",
            variant: None,
            scenario: "seal-16KiB",
            placement: "one-core",
            p50_us: None,
            p99_us: None,
            gbps: round(Some(seal_rate / 1e9)),
            msgs_per_s: None,
            bytes_per_conn: None,
            events_dropped: None,
        }])
        .collect();
    Ok(serde_json::to_string_pretty(&list)? + "\n")
}

const CHART: [(&str, &str); 7] = [
    ("rtt-64B", "64 B round trip (p50)"),
    ("rtt-4KiB", "4 KiB round trip (p50)"),
    ("inflight16-64B", "16 x 64 B in flight (msgs/s)"),
    ("stream-1MiB", "1 MiB messages (GB/s)"),
    ("fanout8", "fan-out to 8 (events/s)"),
    ("connect", "connection set-up (p50)"),
    ("idle-conn-mem", "memory per idle connection"),
];

fn color(system: System) -> &'static str {
    match system {
        System::Raw => "#7f7f7f",
        System::Tokio => "#bcbd22",
        System::Peerwire => "#1f77b4",
        System::PeerwireExe => "#aec7e8",
        System::PeerwireTls => "#2ca02c",
        System::PeerwireTlsToken => "#98df8a",
        System::PeerwireC => "#17becf",
        System::PeerwireWs => "#8c564b",
        System::PeerwireBlocking => "#e377c2",
        System::Tonic => "#ff7f0e",
        System::Ttrpc => "#9467bd",
        System::RawBatched => "#c7c7c7",
        System::OpensslEcho => "#bcbd22",
    }
}

fn label(system: System) -> &'static str {
    match system {
        System::PeerwireTlsToken => "peerwire-tls (server TLS + token)",
        s => s.name(),
    }
}

/// Grouped horizontal bars, one group per scenario, each bar a system's figure relative to raw
/// on a log scale, longer = better, with a line at raw = 1.
fn svg(rows: &[Row], placement: &str) -> Option<String> {
    let bars: Vec<(&str, Vec<(System, f64)>)> = CHART
        .iter()
        .map(|(scenario, title)| {
            let group: Vec<(System, f64)> = System::ALL
                .iter()
                .filter_map(|&s| {
                    let r = rows.iter().find(|r| {
                        r.system == s && r.scenario == *scenario && r.placement == placement
                    })?;
                    Some((s, r.gain_over_raw(rows)?))
                })
                .collect();
            (*title, group)
        })
        .filter(|(_, g)| !g.is_empty())
        .collect();
    if bars.is_empty() {
        return None;
    }
    let values = bars.iter().flat_map(|(_, g)| g.iter().map(|(_, v)| *v));
    let lo = values
        .clone()
        .fold(1.0f64, f64::min)
        .log10()
        .floor()
        .min(-1.0);
    let hi = values.fold(1.0f64, f64::max).log10().ceil().max(1.0);
    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| bars.iter().any(|(_, g)| g.iter().any(|(x, _)| x == s)))
        .collect();
    let (left, plot_w, bar_h, gap, group_gap) = (230.0, 560.0, 14.0, 3.0, 14.0);
    let top = 112.0;
    let x = |v: f64| left + (v.log10() - lo) / (hi - lo) * plot_w;
    let plot_h: f64 = bars
        .iter()
        .map(|(_, g)| g.len() as f64 * (bar_h + gap) + group_gap)
        .sum();
    let width = left + plot_w + 90.0;
    let height = top + plot_h + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="24" font-size="16" font-weight="bold" text-anchor="middle">peerwire, tonic and ttrpc relative to a raw Unix socket ({placement})</text>"##,
        width / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="44" text-anchor="middle" fill="#444">longer is better; raw = 1. Latency, set-up, memory: raw / system. Throughput: system / raw. Log scale.</text>"##,
        width / 2.0
    );
    // Legend.
    let mut lx = 20.0;
    for sys in &systems {
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="60" width="12" height="12" fill="{}"/><text x="{}" y="70">{}</text>"##,
            color(*sys),
            lx + 16.0,
            label(*sys)
        );
        lx += 16.0 + label(*sys).len() as f64 * 7.0 + 18.0;
    }
    // Grid: 1, 2, 5 per decade; labels on the decades and at 0.5 and 2.
    let mut e = lo as i32;
    while e < hi as i32 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            let gx = x(v);
            let decade = m == 1.0;
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{}" stroke="{}" stroke-width="1"/>"##,
                top - 8.0,
                top + plot_h,
                if decade { "#bbb" } else { "#e4e4e4" }
            );
            if decade || (e == -1 && m == 5.0) || (e == 0 && m == 2.0) {
                let _ = writeln!(
                    s,
                    r##"<text x="{gx:.1}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
                    top + plot_h + 16.0,
                    trim(v)
                );
            }
        }
        e += 1;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
        x(10f64.powf(hi)),
        top + plot_h + 16.0,
        trim(10f64.powf(hi))
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">figure relative to raw (x raw, longer = better)</text>"##,
        left + plot_w / 2.0,
        top + plot_h + 36.0
    );
    // Bars.
    let mut y = top;
    for (title, group) in &bars {
        let group_h = group.len() as f64 * (bar_h + gap);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" font-weight="bold">{title}</text>"##,
            left - 10.0,
            y + group_h / 2.0 + 4.0
        );
        for (sys, v) in group {
            let (x0, x1) = (x(10f64.powf(lo)), x(*v));
            let _ = writeln!(
                s,
                r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{bar_h}" fill="{}"><title>{}: {} x raw</title></rect>"##,
                (x1 - x0).max(1.0),
                color(*sys),
                label(*sys),
                trim(*v)
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
                x1 + 4.0,
                y + bar_h - 3.0,
                trim(*v)
            );
            y += bar_h + gap;
        }
        y += group_gap;
    }
    let one = x(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{one:.1}" y1="{}" x2="{one:.1}" y2="{}" stroke="#d62728" stroke-width="2" stroke-dasharray="5,3"/>"##,
        top - 8.0,
        top + plot_h
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{}" fill="#d62728" font-weight="bold">raw = 1</text>"##,
        one + 4.0,
        top - 12.0
    );
    s.push_str("</svg>\n");
    Some(s)
}

/// A ratio with two significant digits: 0.034, 0.52, 1.9, 12.
fn trim(v: f64) -> String {
    let digits = (1 - v.log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

/// Writes the tables, goals and charts; `seal_rate`: the one-core AES-128-GCM sealing rate in
/// bytes/s (a row of `results.json`: `aes-128-gcm`, `seal-16KiB`, `one-core`).
pub(crate) fn write(rows: &[Row], seal_rate: f64, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    println!("{}\n{LEGEND}\n", text_table(rows));
    let bound = format!(
        "AES-128-GCM sealing, 16 KiB records, one core (EVP): {:.2} GB/s; tls-bound: {:.2} GB/s \
         same-cpu, {:.2} GB/s split",
        seal_rate / 1e9,
        seal_rate / 2e9,
        seal_rate / 1e9
    );
    let goals21 = crate::goals::goals(rows, seal_rate);
    let goals = format!(
        "{bound}\n\n{}\nEarlier goals (issue 9 and after):\n\n{}",
        crate::goals::table(&goals21),
        goals_table(rows)
    );
    println!("{goals}");
    let md = format!("{}\n{LEGEND}\n\n{goals}", markdown_table(rows));
    let files = [
        ("results.json", Some(json(rows, seal_rate)?)),
        (
            "goals.json",
            Some(serde_json::to_string_pretty(&goals21)? + "\n"),
        ),
        ("results.md", Some(md)),
        ("ratios.svg", svg(rows, "same-cpu")),
        ("ratios-split.svg", svg(rows, "split")),
    ];
    for (name, text) in files {
        if let Some(text) = text {
            let path = out.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The C client's 64 B round trip beside the Rust client's, per placement, from the same run
/// (issue 18: within 1.1x).
pub(crate) fn c_client_ratio(rows: &[Row]) {
    let p50 = |system: System, placement: &str| {
        rows.iter()
            .find(|r| r.system == system && r.scenario == "rtt-64B" && r.placement == placement)
            .and_then(|r| r.f.p50_us)
    };
    for placement in ["same-cpu", "split"] {
        if let (Some(c), Some(rust)) = (
            p50(System::PeerwireC, placement),
            p50(System::Peerwire, placement),
        ) {
            println!(
                "C client (blocking call, 64 B echo), {placement}: p50 {c:.1} us beside the Rust \
                 client's {rust:.1} us: {:.2}x",
                c / rust
            );
        }
    }
}
