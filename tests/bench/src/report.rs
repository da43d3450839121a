// SPDX-License-Identifier: GPL-2.0
//! The report: every figure beside its reference from the same boot, the
//! ratio and the goal (`Documentation/performance.rst` explains each).

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

/// How a ratio (or a value) is held to its goal.
#[derive(Clone, Copy)]
enum Goal {
    /// The ratio is at least this.
    RatioAtLeast(f64),
    /// The ratio is at most this.
    RatioAtMost(f64),
    /// The measured value (seconds or bytes) is at most this.
    ValueAtMost(f64),
    /// No goal: shown for the reader.
    None,
}

struct Row {
    figure: String,
    measured: String,
    reference: String,
    /// The number the goal applies to: the ratio, or the value itself.
    value: Option<f64>,
    ratio: Option<f64>,
    goal: Goal,
}

impl Row {
    fn met(&self) -> Option<bool> {
        let (r, v) = (self.ratio, self.value);
        match self.goal {
            Goal::RatioAtLeast(g) => r.map(|r| r >= g),
            Goal::RatioAtMost(g) => r.map(|r| r <= g),
            Goal::ValueAtMost(g) => v.map(|v| v <= g),
            Goal::None => None,
        }
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::RatioAtLeast(g) => format!(">= {g} x"),
            Goal::RatioAtMost(g) => format!("<= {g} x"),
            Goal::ValueAtMost(g) if self.measured.ends_with("ms") => format!("<= {} ms", g * 1e3),
            Goal::ValueAtMost(g) if self.measured.ends_with(" s") => format!("<= {g} s"),
            Goal::ValueAtMost(g) => format!("<= {}", bytes(g)),
            Goal::None => "-".into(),
        }
    }
}

fn bytes(b: f64) -> String {
    if b >= f64::from(1u32 << 20) {
        format!("{:.2} MiB", b / f64::from(1u32 << 20))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn rate(bytes_: f64, seconds: f64) -> String {
    format!("{:.1} MiB/s", bytes_ / seconds / f64::from(1u32 << 20))
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// The bandwidth of the memcpy measured beside a figure, bytes/s.
fn memcpy_rate(line: &Value) -> Option<f64> {
    Some(num(line, "memcpy_bytes")? / num(line, "memcpy_seconds")?)
}

/// The lines of one figure, optionally with `key` equal to `want`.
fn find<'a>(lines: &'a [Value], figure: &str, key: &str, want: Value) -> Option<&'a Value> {
    lines
        .iter()
        .find(|l| l["figure"] == figure && (key.is_empty() || l[key] == want))
}

/// The median of `f` over every line of `figure` whose `size` is `size`
/// (a figure measured in several rounds); `None` if there is none.
fn median_of(
    lines: &[Value],
    figure: &str,
    size: u64,
    f: impl Fn(&Value) -> Option<f64>,
) -> Option<f64> {
    median(
        lines
            .iter()
            .filter(|l| l["figure"] == figure && l["size"] == json!(size))
            .filter_map(f)
            .collect(),
    )
}

/// The median of `v`; `None` if it is empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

const MIB: u64 = 1 << 20;

fn rows(lines: &[Value]) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut need = |what: &str, v: Option<&Value>| {
        if v.is_none() {
            missing.push(what.to_string());
        }
    };

    // Save and load of the 256 MiB device against memcpy.
    for figure in ["save", "load"] {
        let line = find(lines, figure, "size", json!(256 * MIB));
        need(&format!("{figure} of 256 MiB"), line);
        // Each round against its own memcpy; the medians of the rounds.
        let of = |f: fn(&Value) -> Option<f64>| median_of(lines, figure, 256 * MIB, f);
        let r = of(|l| Some(num(l, "bytes")? / num(l, "seconds")?));
        let mem_rate = of(memcpy_rate);
        let ratio = of(|l| Some(num(l, "bytes")? / num(l, "seconds")? / memcpy_rate(l)?));
        rows.push(Row {
            figure: format!(
                "{figure} 256 MiB, 1 MiB {}",
                if figure == "save" { "reads" } else { "writes" }
            ),
            measured: r.map_or("missing".into(), |r| rate(r, 1.0)),
            reference: mem_rate.map_or("missing".into(), |m| format!("memcpy {}", rate(m, 1.0))),
            value: r,
            ratio,
            goal: Goal::RatioAtLeast(0.5),
        });
    }

    // QEMU: the device's state against guest RAM, same QEMU pair.
    let dev = find(lines, "qemu-migration", "what", json!("device"));
    let ram = find(lines, "qemu-migration", "what", json!("ram"));
    need("qemu-migration device", dev);
    need("qemu-migration ram", ram);
    let dev_rate = dev.and_then(|d| Some(num(d, "vfio_bytes")? / (num(d, "total_ms")? / 1e3)));
    let ram_rate = ram.and_then(|d| Some(num(d, "ram_bytes")? / (num(d, "total_ms")? / 1e3)));
    rows.push(Row {
        figure: "QEMU migration, 256 MiB mdev".into(),
        measured: match (dev, dev_rate) {
            (Some(d), Some(r)) => format!(
                "{} (total {:.1} s, downtime {} ms)",
                rate(r, 1.0),
                num(d, "total_ms").unwrap_or(0.0) / 1e3,
                num(d, "downtime_ms").unwrap_or(0.0)
            ),
            _ => "missing".into(),
        },
        reference: match (ram, ram_rate) {
            (Some(d), Some(r)) => format!(
                "256 MiB RAM {} (total {:.1} s)",
                rate(r, 1.0),
                num(d, "total_ms").unwrap_or(0.0) / 1e3
            ),
            _ => "missing".into(),
        },
        value: dev_rate,
        ratio: dev_rate.zip(ram_rate).map(|(d, r)| d / r),
        goal: Goal::RatioAtLeast(0.8),
    });

    // Against the C reference, mtty.
    for (figure, title) in [
        ("set-roundtrip", "SET RUNNING>STOP>RUNNING"),
        ("create-remove", "mdev create + remove"),
    ] {
        let ours = find(lines, figure, "device", json!("rmdev_sample"));
        let theirs = find(lines, figure, "device", json!("mtty"));
        need(&format!("{figure} rmdev_sample"), ours);
        need(&format!("{figure} mtty"), theirs);
        let (o, t) = (
            ours.and_then(|l| num(l, "seconds")),
            theirs.and_then(|l| num(l, "seconds")),
        );
        rows.push(Row {
            figure: title.into(),
            measured: o.map_or("missing".into(), |o| format!("{:.1} us", o * 1e6)),
            reference: t.map_or("missing".into(), |t| format!("mtty {:.1} us", t * 1e6)),
            value: o,
            ratio: o.zip(t).map(|(o, t)| o / t),
            goal: Goal::RatioAtMost(1.1),
        });
    }

    // Frames through the VF mdev against the same driver on a VF passed
    // through: what arrived on the PF per second. The ratio is the median
    // of each round's (the paths take turns within a round).
    for (len, unit) in [(60u64, "frames"), (1514, "bytes")] {
        let of = |path: &str| -> Vec<&Value> {
            lines
                .iter()
                .filter(|l| {
                    l["figure"] == "vf-tx" && l["path"] == path && l["frame_bytes"] == json!(len)
                })
                .collect()
        };
        let (m, p) = (of("mdev"), of("vfio-pci"));
        need(&format!("vf-tx mdev {len}"), m.first().copied());
        need(&format!("vf-tx vfio-pci {len}"), p.first().copied());
        let per_second =
            |l: &Value, key: &str| -> Option<f64> { Some(num(l, key)? / num(l, "seconds")?) };
        let med =
            |v: &[&Value], key: &str| median(v.iter().filter_map(|l| per_second(l, key)).collect());
        let ratio = median(
            m.iter()
                .filter_map(|ml| {
                    let pl = p.iter().find(|pl| pl["round"] == ml["round"])?;
                    Some(per_second(ml, unit)? / per_second(pl, unit)?)
                })
                .collect(),
        );
        let show = |v: &[&Value]| match (med(v, unit), med(v, "sent")) {
            (Some(r), Some(s)) if unit == "bytes" => {
                format!("{} (sent {s:.0} frames/s)", rate(r, 1.0))
            }
            (Some(r), Some(s)) => format!("{r:.0} frames/s (sent {s:.0})"),
            _ => "missing".into(),
        };
        rows.push(Row {
            figure: format!("VF transmit, {len}-byte frames"),
            measured: show(&m),
            reference: format!("vfio-pci {}", show(&p)),
            value: med(&m, unit),
            ratio,
            goal: Goal::RatioAtLeast(0.7),
        });
    }

    let sc = find(lines, "stopcopy", "", Value::Null);
    need("stopcopy", sc);
    let (sent, dirtied) = (
        sc.and_then(|l| num(l, "bytes")),
        sc.and_then(|l| num(l, "dirtied")),
    );
    rows.push(Row {
        figure: "STOP_COPY bytes after pre-copy".into(),
        measured: sent.map_or("missing".into(), |b| format!("{b:.0} B")),
        reference: dirtied.map_or("missing".into(), |d| format!("dirtied {d:.0} B")),
        value: sent,
        ratio: sent.zip(dirtied).map(|(s, d)| s / d),
        goal: Goal::RatioAtMost(1.01),
    });

    for (size, label) in [
        (16 << 10, "16 KiB"),
        (4 * MIB, "4 MiB"),
        (256 * MIB, "256 MiB"),
    ] {
        let l = find(lines, "session-memory", "size", json!(size));
        need(&format!("session-memory {label}"), l);
        let b = l.and_then(|l| num(l, "bytes"));
        rows.push(Row {
            figure: format!("save session memory, {label} device"),
            measured: b.map_or("missing".into(), bytes),
            reference: format!("device {label}"),
            value: b,
            ratio: b.map(|b| b / size as f64),
            goal: Goal::ValueAtMost((2 * MIB) as f64),
        });
    }

    let check = find(lines, "rmdev-check", "", Value::Null);
    need("rmdev-check", check);
    rows.push(Row {
        figure: "rmdev check (one process)".into(),
        measured: check
            .and_then(|l| num(l, "seconds"))
            .map_or("missing".into(), |s| format!("{:.2} ms", s * 1e3)),
        reference: check
            .and_then(|l| num(l, "spawn_seconds"))
            .map_or("-".into(), |s| format!("/bin/true {:.2} ms", s * 1e3)),
        value: check.and_then(|l| num(l, "seconds")),
        ratio: check.and_then(|l| Some(num(l, "seconds")? / num(l, "spawn_seconds")?)),
        goal: Goal::ValueAtMost(0.005),
    });
    let m = find(lines, "rmdev-match", "", Value::Null);
    need("rmdev-match", m);
    rows.push(Row {
        figure: "rmdev match --offline 1000 x 100".into(),
        measured: m
            .and_then(|l| num(l, "seconds"))
            .map_or("missing".into(), |s| format!("{s:.3} s")),
        reference: "-".into(),
        value: m.and_then(|l| num(l, "seconds")),
        ratio: None,
        goal: Goal::ValueAtMost(1.0),
    });

    // The checksum's two implementations (for the record: which is faster
    // in this VM decides which the kernel should use).
    for method in ["table", "sse4.2"] {
        let l = find(lines, "crc", "method", json!(method));
        let r = l.and_then(|l| Some(num(l, "bytes")? / num(l, "seconds")?));
        let mem_rate = l.and_then(memcpy_rate);
        rows.push(Row {
            figure: format!("CRC-32C, {method}"),
            measured: r.map_or("missing".into(), |r| rate(r, 1.0)),
            reference: mem_rate.map_or("missing".into(), |m| format!("memcpy {}", rate(m, 1.0))),
            value: r,
            ratio: r.zip(mem_rate).map(|(r, m)| r / m),
            goal: Goal::None,
        });
    }

    // Cost growth: the save's time per byte at each size against 4 MiB's,
    // medians of rounds in which the sizes took turns (a memcpy of each
    // size would add its own noise: short copies time badly under TCG).
    let per_byte = |size: u64| {
        median_of(lines, "save", size, |l| {
            Some(num(l, "seconds")? / num(l, "bytes")?)
        })
    };
    let base = per_byte(4 * MIB);
    for (size, label) in [
        (16 << 10, "16 KiB"),
        (4 * MIB, "4 MiB"),
        (64 * MIB, "64 MiB"),
        (256 * MIB, "256 MiB"),
    ] {
        let c = per_byte(size);
        need(
            &format!("save of {label}"),
            c.as_ref().map(|_| &Value::Null),
        );
        let ratio = c.zip(base).map(|(c, b)| c / b);
        rows.push(Row {
            figure: format!("save cost per byte, {label}"),
            measured: c.map_or("missing".into(), |c| format!("{:.2} ns/B", c * 1e9)),
            reference: "4 MiB's".into(),
            value: c,
            ratio,
            goal: if size >= 64 * MIB {
                Goal::RatioAtMost(1.2)
            } else {
                Goal::None
            },
        });
    }
    (rows, missing)
}

/// Prints the table; writes it as JSON to `json`. Whether every goal was
/// met (and every figure measured).
pub(crate) fn report(results: &Path, json_out: Option<&Path>) -> Result<bool, String> {
    let text = fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    let mut lines = Vec::new();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(l)
            .map_err(|e| format!("{}:{}: not JSON: {e}", results.display(), i + 1))?;
        if v.get("figure").and_then(Value::as_str).is_none() {
            return Err(format!("{}:{}: no \"figure\"", results.display(), i + 1));
        }
        lines.push(v);
    }
    let (rows, missing) = rows(&lines);
    let w = [34, 44, 32, 7, 10];
    println!(
        "{:<a$} {:<b$} {:<c$} {:>d$} {:<e$} met",
        "figure",
        "measured",
        "reference (same boot)",
        "ratio",
        "goal",
        a = w[0],
        b = w[1],
        c = w[2],
        d = w[3],
        e = w[4]
    );
    let mut missed = Vec::new();
    let mut out = Vec::new();
    for r in &rows {
        let met = r.met();
        let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.3}"));
        let mark = match met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:<a$} {:<b$} {:<c$} {:>d$} {:<e$} {mark}",
            r.figure,
            r.measured,
            r.reference,
            ratio,
            r.goal_text(),
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        );
        if met == Some(false) {
            missed.push(format!("{}: {} (goal {})", r.figure, ratio, r.goal_text()));
        }
        out.push(
            json!({"figure": r.figure, "measured": r.measured, "reference": r.reference,
                        "value": r.value, "ratio": r.ratio, "goal": r.goal_text(), "met": met}),
        );
    }
    for m in &missing {
        println!("MISSING: no measurement of {m}");
    }
    for m in &missed {
        println!("GOAL MISSED: {m}");
    }
    if let Some(p) = json_out {
        let doc = json!({"rows": out, "missed": missed, "missing": missing, "measurements": lines});
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        fs::write(p, text + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(missed.is_empty() && missing.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A full set of measurements that meets every goal.
    fn good() -> Vec<Value> {
        let mut v = vec![
            json!({"figure": "crc", "method": "table", "bytes": 100, "seconds": 1.0,
                   "memcpy_bytes": 1000, "memcpy_seconds": 1.0}),
            json!({"figure": "qemu-migration", "what": "device", "vfio_bytes": 900, "total_ms": 1000, "downtime_ms": 5}),
            json!({"figure": "qemu-migration", "what": "ram", "ram_bytes": 1000, "total_ms": 1000}),
            json!({"figure": "set-roundtrip", "device": "rmdev_sample", "seconds": 1.05e-5}),
            json!({"figure": "set-roundtrip", "device": "mtty", "seconds": 1.0e-5}),
            json!({"figure": "create-remove", "device": "rmdev_sample", "seconds": 1.0e-3}),
            json!({"figure": "create-remove", "device": "mtty", "seconds": 1.0e-3}),
            json!({"figure": "stopcopy", "bytes": 1010, "dirtied": 1000}),
            json!({"figure": "rmdev-check", "seconds": 0.004, "spawn_seconds": 0.002}),
            json!({"figure": "rmdev-match", "seconds": 0.5}),
        ];
        // Frames through the mdev at 0.7 x vfio-pci's, each size (the
        // 60-byte frames first).
        for len in [60u64, 1514] {
            v.push(
                json!({"figure": "vf-tx", "round": 0, "path": "mdev", "frame_bytes": len,
                          "sent": 700, "frames": 700, "bytes": 700 * len, "seconds": 1.0}),
            );
            v.push(
                json!({"figure": "vf-tx", "round": 0, "path": "vfio-pci", "frame_bytes": len,
                          "sent": 3000, "frames": 1000, "bytes": 1000 * len, "seconds": 1.0}),
            );
        }
        for size in [16u64 << 10, 4 * MIB, 256 * MIB] {
            v.push(json!({"figure": "session-memory", "size": size, "bytes": 2 * MIB}));
        }
        for size in [16u64 << 10, 4 * MIB, 64 * MIB, 256 * MIB] {
            let b = size as f64;
            v.push(
                json!({"figure": "save", "size": size, "bytes": b, "seconds": b / 600.0,
                          "memcpy_bytes": 1000, "memcpy_seconds": 1.0}),
            );
            v.push(
                json!({"figure": "load", "size": size, "bytes": b, "seconds": b / 500.0,
                          "memcpy_bytes": 1000, "memcpy_seconds": 1.0}),
            );
        }
        v
    }

    fn verdicts(lines: &[Value]) -> (Vec<(String, Option<bool>)>, Vec<String>) {
        let (rows, missing) = rows(lines);
        (
            rows.iter().map(|r| (r.figure.clone(), r.met())).collect(),
            missing,
        )
    }

    #[test]
    fn every_goal_met_at_its_limit() {
        let (v, missing) = verdicts(&good());
        assert!(missing.is_empty(), "{missing:?}");
        assert!(v.iter().all(|(_, m)| *m != Some(false)), "{v:?}");
        let goals = v.iter().filter(|(_, m)| m.is_some()).count();
        assert_eq!(goals, 15, "{v:?}");
    }

    #[test]
    fn each_goal_missed_is_named() {
        let cases: [(&str, &str, &str, f64, &str); 8] = [
            ("load", "size", "", 268_435_456.0 / 400.0, "load 256 MiB"),
            ("qemu-migration", "what", "device", 799.0, "QEMU"),
            ("set-roundtrip", "device", "rmdev_sample", 1.11e-5, "SET"),
            ("stopcopy", "", "", 1011.0, "STOP_COPY"),
            (
                "session-memory",
                "size",
                "",
                (2 * MIB + 1) as f64,
                "save session memory, 256 MiB",
            ),
            ("rmdev-check", "", "", 0.0051, "rmdev check"),
            ("rmdev-match", "", "", 1.01, "rmdev match"),
            ("vf-tx", "path", "mdev", 699.0, "VF transmit, 60-byte"),
        ];
        for (figure, key, want, value, row) in cases {
            let mut lines = good();
            let l = lines
                .iter_mut()
                .find(|l| {
                    l["figure"] == figure
                        && (key.is_empty()
                            || (want.is_empty() && l[key] == json!(256 * MIB))
                            || l[key] == json!(want))
                })
                .unwrap();
            let field = match figure {
                "qemu-migration" => "vfio_bytes",
                "stopcopy" | "session-memory" => "bytes",
                "vf-tx" => "frames",
                _ => "seconds",
            };
            l[field] = json!(value);
            let (v, _) = verdicts(&lines);
            let missed: Vec<_> = v.iter().filter(|(_, m)| *m == Some(false)).collect();
            assert_eq!(missed.len(), 1, "{figure}: {missed:?}");
            assert!(missed[0].0.starts_with(row), "{figure}: {missed:?}");
        }
    }

    #[test]
    fn superlinear_growth_is_a_miss() {
        let mut lines = good();
        for l in &mut lines {
            if l["figure"] == "save" && l["size"] == json!(256 * MIB) {
                l["seconds"] = json!(256.0 * MIB as f64 / 600.0 * 1.3);
            }
        }
        let (v, _) = verdicts(&lines);
        let missed: Vec<_> = v
            .iter()
            .filter(|(_, m)| *m == Some(false))
            .map(|(f, _)| f.as_str())
            .collect();
        assert!(
            missed.contains(&"save cost per byte, 256 MiB"),
            "{missed:?}"
        );
    }

    #[test]
    fn rounds_count_by_their_median() {
        // Three rounds of the 256 MiB save: 0.4, 0.7 and 0.6 x memcpy.
        let mut lines: Vec<Value> = good()
            .into_iter()
            .filter(|l| !(l["figure"] == "save" && l["size"] == json!(256 * MIB)))
            .collect();
        for r in [0.4, 0.7, 0.6] {
            let b = (256 * MIB) as f64;
            lines.push(json!({"figure": "save", "size": 256 * MIB, "bytes": b,
                              "seconds": b / (1000.0 * r), "memcpy_bytes": 1000, "memcpy_seconds": 1.0}));
        }
        let (rows, _) = rows(&lines);
        let save = rows
            .iter()
            .find(|r| r.figure.starts_with("save 256 MiB"))
            .unwrap();
        assert!((save.ratio.unwrap() - 0.6).abs() < 1e-9, "{:?}", save.ratio);
        assert_eq!(save.met(), Some(true));
    }

    #[test]
    fn vf_transmit_takes_the_median_of_each_rounds_ratio() {
        // Per round (mdev, vfio-pci) frames/s: 400 / 1000, 900 / 1000 and
        // 800 / 500 (round 2's vfio-pci took 2 s): ratios 0.4, 0.9 and 1.6,
        // median 0.9; the medians of the rates alone would give 0.8.
        let mut lines: Vec<Value> = good()
            .into_iter()
            .filter(|l| !(l["figure"] == "vf-tx" && l["frame_bytes"] == json!(60)))
            .collect();
        for (round, m, p, p_seconds) in [
            (0, 400.0, 1000.0, 1.0),
            (1, 900.0, 1000.0, 1.0),
            (2, 800.0, 1000.0, 2.0),
        ] {
            for (path, f, secs) in [("mdev", m, 1.0), ("vfio-pci", p, p_seconds)] {
                lines.push(json!({"figure": "vf-tx", "round": round, "path": path,
                                  "frame_bytes": 60, "sent": f, "frames": f, "bytes": f * 60.0,
                                  "seconds": secs}));
            }
        }
        let (rows, missing) = rows(&lines);
        assert!(missing.is_empty(), "{missing:?}");
        let r = rows
            .iter()
            .find(|r| r.figure.starts_with("VF transmit, 60"))
            .unwrap();
        assert!((r.ratio.unwrap() - 0.9).abs() < 1e-9, "{:?}", r.ratio);
        assert_eq!(r.met(), Some(true));
    }

    #[test]
    fn a_missing_figure_is_reported() {
        let lines: Vec<Value> = good()
            .into_iter()
            .filter(|l| l["figure"] != "stopcopy")
            .collect();
        let (_, missing) = verdicts(&lines);
        assert_eq!(missing, vec!["stopcopy".to_string()]);
    }
}
