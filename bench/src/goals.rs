//! The goals of issue 21, each a ratio against a floor measured in the same run: its figure,
//! its floor and whether it is met, per placement where the issue asks for both. Printed after
//! every run and written to `results.md` and `goals.json`.

use serde::Serialize;

use crate::report::Row;

/// One goal in one placement.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Goal {
    pub goal: &'static str,
    pub placement: &'static str,
    /// The figure compared with the floor (a ratio or a rate), absent when not measured.
    pub value: Option<f64>,
    /// The figure and what it is made of, for people.
    pub figure: String,
    pub floor: String,
    pub met: Option<bool>,
}

/// The first row of `system` (its name: rows of systems other engineers add are read by name),
/// `scenario` and `placement`.
fn find<'a>(rows: &'a [Row], system: &str, scenario: &str, placement: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.system.name() == system && r.scenario == scenario && r.placement == placement)
}

const PLACEMENTS: [&str; 2] = ["same-cpu", "split"];

/// The goals of the run; `seal_rate` is the one-core AES-128-GCM sealing rate in bytes/s.
pub(crate) fn goals(rows: &[Row], seal_rate: f64) -> Vec<Goal> {
    let p50 = |s: &str, sc: &str, pl: &str| find(rows, s, sc, pl).and_then(|r| r.f.p50_us);
    let p99 = |s: &str, sc: &str, pl: &str| find(rows, s, sc, pl).and_then(|r| r.f.p99_us);
    let gbps = |s: &str, sc: &str, pl: &str| find(rows, s, sc, pl).and_then(|r| r.f.gbps);
    let rate = |s: &str, sc: &str, pl: &str| find(rows, s, sc, pl).and_then(|r| r.f.msgs_per_s);
    let mut out = Vec::new();
    // A goal with its figure (`value`, shown as `figure`), its floor and its test.
    let mut goal =
        |goal, placement, value: Option<f64>, figure: String, floor: &str, ok: fn(f64) -> bool| {
            let value = value.filter(|v| v.is_finite());
            out.push(Goal {
                goal,
                placement,
                value,
                figure: if value.is_some() {
                    figure
                } else {
                    "not measured".into()
                },
                floor: floor.into(),
                met: value.map(ok),
            });
        };
    let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} us"));
    // `a` in times `b` (latencies), shown with both.
    let times = |a: Option<f64>, b: Option<f64>| {
        let v = Some(a? / b?);
        Some((v, format!("{:.2}x ({} vs {})", v?, us(a), us(b))))
    };
    let nan = || (None, String::new());

    for pl in PLACEMENTS {
        let (v, f) =
            times(p50("peerwire", "rtt-64B", pl), p50("tokio", "rtt-64B", pl)).unwrap_or_else(nan);
        goal(
            "plain 64 B p50 <= 1.10x bare tokio",
            pl,
            v,
            f,
            "1.10x tokio",
            |v| v <= 1.10,
        );
    }
    let same = "same-cpu";
    let (v, f) = times(
        p99("peerwire", "rtt-64B", same),
        p99("raw", "rtt-64B", same),
    )
    .unwrap_or_else(nan);
    goal("plain 64 B p99 <= 1.5x raw", same, v, f, "1.5x raw", |v| {
        v <= 1.5
    });
    for pl in PLACEMENTS {
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        let tls = diff(
            p50("peerwire-tls", "rtt-64B", pl),
            p50("peerwire", "rtt-64B", pl),
        );
        // TLS's own cost in the floor; where noise makes it vanish, the ratio means nothing
        // (not measured in that run).
        let floor = diff(
            p50("openssl-echo", "rtt-64B", pl),
            p50("raw", "rtt-64B", pl),
        )
        .filter(|f| *f > 0.5);
        let (v, f) = times(tls, floor).unwrap_or_else(nan);
        let what = "TLS 64 B p50: (peerwire-tls - peerwire) <= 1.2x (openssl-echo - raw)";
        goal(what, pl, v, f, "1.2x", |v| v <= 1.2);
    }
    for pl in PLACEMENTS {
        // Both ends seal and open every byte: on one CPU it does all four, split each does two.
        let bound = seal_rate / 1e9 / if pl == same { 2.0 } else { 1.0 };
        let tls = gbps("peerwire-tls", "stream-1MiB", pl);
        let v = tls.map(|t| t / bound);
        let f = format!(
            "{:.2} ({:.2} of {bound:.2} GB/s)",
            v.unwrap_or(0.0),
            tls.unwrap_or(0.0)
        );
        let floor = format!("0.6 of {bound:.2} GB/s");
        goal("TLS 1 MiB >= 0.6 of tls-bound", pl, v, f, &floor, |v| {
            v >= 0.6
        });
    }
    for pl in PLACEMENTS {
        let (v, f) = times(
            p50("peerwire-tls", "connect", pl),
            p50("openssl-echo", "connect", pl),
        )
        .unwrap_or_else(nan);
        goal(
            "TLS connect p50 <= 1.3x openssl-echo's connect",
            pl,
            v,
            f,
            "1.3x openssl-echo",
            |v| v <= 1.3,
        );
    }
    let v = rate("peerwire", "fanout8", same);
    let f = format!("{:.2}M events/s", v.unwrap_or(0.0) / 1e6);
    goal(
        "fan-out to 8 >= 1.6M events/s",
        same,
        v,
        f,
        "1.6M events/s",
        |v| v >= 1.6e6,
    );
    let (pw, raw) = (
        rate("peerwire", "inflight16-64B", same),
        rate("raw-batched", "inflight16-64B", same),
    );
    let v = pw.zip(raw).map(|(a, b)| a / b);
    let f = format!(
        "{:.2} ({:.0}k vs {:.0}k msgs/s)",
        v.unwrap_or(0.0),
        pw.unwrap_or(0.0) / 1e3,
        raw.unwrap_or(0.0) / 1e3
    );
    goal(
        "16 in flight >= 0.7 of batched raw",
        same,
        v,
        f,
        "0.7 of raw-batched",
        |v| v >= 0.7,
    );
    let v = find(rows, "peerwire-tls", "idle-conn-mem", same)
        .and_then(|r| r.f.bytes_per_conn)
        .map(|b| b / 1024.0);
    let f = format!("{:.1} KiB", v.unwrap_or(0.0));
    goal(
        "memory per idle mutual-TLS connection <= 48 KiB",
        same,
        v,
        f,
        "48 KiB",
        |v| v <= 48.0,
    );
    // The blocking client's row, when the harness has it (`peerwire-blocking`).
    let (v, f) = times(
        p50("peerwire-blocking", "rtt-64B", same),
        p50("raw", "rtt-64B", same),
    )
    .unwrap_or_else(nan);
    goal(
        "blocking client 64 B p50 <= 1.25x raw",
        same,
        v,
        f,
        "1.25x raw",
        |v| v <= 1.25,
    );
    out
}

/// The goals as a Markdown table.
pub(crate) fn table(goals: &[Goal]) -> String {
    let mut out = "| goal (issue 21) | placement | figure | floor | met |\n|---|---|---|---|---|\n"
        .to_string();
    for g in goals {
        let met = match g.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "-",
        };
        out += &format!(
            "| {} | {} | {} | {} | {met} |\n",
            g.goal, g.placement, g.figure, g.floor
        );
    }
    out
}
