//! Reports from a suite's `results.jsonl`: `report.md` (tables: median and spread per target
//! per scenario) and `report.html` (the same tables with the SVG plots inline); the plots are
//! also written to `plots/` for the markdown to link.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::plan::Scenario;
use crate::run::RunResult;
use crate::suite::Failure;
use crate::target::TargetKind;

/// Median, least and most of some figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The least.
    pub min: f64,
    /// The most.
    pub max: f64,
}

/// The spread of `values`; `None` when empty.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Reads a JSON-lines file of `T`; a missing file is empty.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// The figure a scenario is judged by.
fn headline(s: Scenario) -> (&'static str, fn(&RunResult) -> f64) {
    match s {
        Scenario::Patterns => ("published/s", |r| r.summary.published_per_s),
        Scenario::Latency => ("p50 µs", |r| r.summary.latency_p50_us as f64),
        _ => ("delivered/s", |r| r.summary.delivered_per_s),
    }
}

type Groups<'a> = BTreeMap<(Scenario, String), BTreeMap<TargetKind, Vec<&'a RunResult>>>;

fn group(results: &[RunResult]) -> Groups<'_> {
    let mut g: Groups<'_> = BTreeMap::new();
    for r in results {
        g.entry((r.scenario, r.variant.clone()))
            .or_default()
            .entry(r.target)
            .or_default()
            .push(r);
    }
    g
}

fn fmt_rate(v: f64) -> String {
    crate::progress::si(v)
}

fn cell(s: Option<Spread>, f: fn(f64) -> String) -> String {
    match s {
        Some(s) if s.min == s.max => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
        None => "–".into(),
    }
}

/// One table row per target of a group: the columns of the markdown and HTML tables.
fn rows(by_target: &BTreeMap<TargetKind, Vec<&RunResult>>) -> Vec<Vec<String>> {
    by_target
        .iter()
        .map(|(t, runs)| {
            let get =
                |f: fn(&RunResult) -> f64| spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let saturated = runs.iter().any(|r| r.generator_saturated);
            let ge = if saturated { "≥ " } else { "" };
            let us = |v: f64| format!("{v:.0}");
            let node_cpu = runs
                .iter()
                .filter_map(|r| r.per_node_cpu_s.as_ref())
                .next_back()
                .map(|v| {
                    v.iter()
                        .map(|c| format!("{c:.1}"))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_else(|| "–".into());
            vec![
                t.name().to_string(),
                runs.len().to_string(),
                format!("{ge}{}", cell(get(|r| r.summary.delivered_per_s), fmt_rate)),
                format!("{ge}{}", cell(get(|r| r.summary.published_per_s), fmt_rate)),
                cell(get(|r| r.summary.delivery_ratio), |v| format!("{v:.4}")),
                cell(get(|r| r.summary.latency_p50_us as f64), us),
                cell(get(|r| r.summary.latency_p99_us as f64), us),
                cell(get(|r| r.summary.latency_p999_us as f64), us),
                cell(get(|r| r.server_cpu_s.unwrap_or(f64::NAN)), |v| {
                    format!("{v:.1}")
                }),
                cell(
                    get(|r| {
                        r.server_rss_peak_bytes
                            .map_or(f64::NAN, |b| b as f64 / 1048576.0)
                    }),
                    |v| format!("{v:.0}"),
                ),
                cell(get(|r| r.generator_cpu_s), |v| format!("{v:.1}")),
                cell(get(server_us_per_delivery), |v| format!("{v:.2}")),
                cell(get(generator_us_per_delivery), |v| format!("{v:.2}")),
                cell(get(|r| r.summary.wasted_bytes as f64 / 1048576.0), |v| {
                    format!("{v:.0}")
                }),
                node_cpu,
            ]
        })
        .collect()
}

/// The server's CPU per delivered notification, µs (NaN when not measured or none delivered).
pub fn server_us_per_delivery(r: &RunResult) -> f64 {
    r.server_cpu_s.unwrap_or(f64::NAN) * 1e6 / r.summary.delivered as f64
}

/// The load generator's CPU (the SDK or the peer's client library, publishing and
/// receiving) per delivered notification, µs.
pub fn generator_us_per_delivery(r: &RunResult) -> f64 {
    r.generator_cpu_s * 1e6 / r.summary.delivered as f64
}

/// "Sift ÷ NATS" per delivery (server, generator), from the medians of one group.
fn versus_nats(by_target: &BTreeMap<TargetKind, Vec<&RunResult>>) -> Option<String> {
    let median = |t: TargetKind, f: fn(&RunResult) -> f64| {
        let runs = by_target.get(&t)?;
        spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()).map(|s| s.median)
    };
    let ratio = |f: fn(&RunResult) -> f64| {
        Some(median(TargetKind::Sift, f)? / median(TargetKind::Nats, f)?)
    };
    let server = ratio(server_us_per_delivery)?;
    let generator = ratio(generator_us_per_delivery)?;
    Some(format!(
        "Per delivery, Sift ÷ NATS: server CPU {server:.2}×, generator (SDK) CPU {generator:.2}×."
    ))
}

const HEADERS: [&str; 15] = [
    "target",
    "runs",
    "delivered/s",
    "published/s",
    "delivery ratio",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "server CPU s",
    "server peak RSS MiB",
    "generator CPU s",
    "server µs/delivery",
    "generator µs/delivery",
    "wasted MiB",
    "per-matcher CPU s",
];

fn title(s: Scenario, variant: &str) -> String {
    if variant.is_empty() {
        s.name().to_string()
    } else {
        format!("{} {variant}", s.name())
    }
}

fn slug(s: Scenario, variant: &str) -> String {
    title(s, variant)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .to_lowercase()
}

/// Reads `out/results.jsonl` (and `failures.jsonl`) and writes `report.md`, `report.html`
/// and `plots/*.svg`.
pub fn write_reports(out: &Path) -> Result<()> {
    let results: Vec<RunResult> = read_jsonl(&out.join("results.jsonl"))?;
    let failures: Vec<Failure> = read_jsonl(&out.join("failures.jsonl"))?;
    let plots_dir = out.join("plots");
    std::fs::create_dir_all(&plots_dir)?;
    let groups = group(&results);
    let mut md = String::new();
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>Sift bench report</title>\
         <style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}\
         table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}\
         td:first-child{text-align:left}</style><h1>Sift bench report</h1>",
    );
    let _ = writeln!(md, "# Sift bench report\n");
    let _ = writeln!(
        md,
        "{} results. Each cell: median (min–max) over the repetitions; \"≥\" marks figures \
         where the load generator used all its CPU (the system may do more).\n",
        results.len()
    );
    let mut plots: Vec<(String, String)> = Vec::new();
    for ((scenario, variant), by_target) in &groups {
        let t = title(*scenario, variant);
        let _ = writeln!(md, "## {t}\n");
        let _ = writeln!(html, "<h2>{t}</h2>");
        let rows = rows(by_target);
        let _ = writeln!(md, "| {} |", HEADERS.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(HEADERS.len()));
        let _ = write!(html, "<table><tr>");
        for h in HEADERS {
            let _ = write!(html, "<th>{h}</th>");
        }
        let _ = writeln!(html, "</tr>");
        for row in &rows {
            let _ = writeln!(md, "| {} |", row.join(" | "));
            let _ = write!(html, "<tr>");
            for c in row {
                let _ = write!(html, "<td>{}</td>", escape(c));
            }
            let _ = writeln!(html, "</tr>");
        }
        let _ = writeln!(html, "</table>");
        if let Some(line) = versus_nats(by_target) {
            let _ = writeln!(md, "\n{line}");
            let _ = writeln!(html, "<p>{}</p>", escape(&line));
        }
        let (metric, f) = headline(*scenario);
        let bars: Vec<(String, Spread)> = by_target
            .iter()
            .filter_map(|(t, runs)| {
                Some((
                    t.name().to_string(),
                    spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())?,
                ))
            })
            .collect();
        let svg = if *scenario == Scenario::Latency {
            let p99: Vec<(String, Spread)> = by_target
                .iter()
                .filter_map(|(t, runs)| {
                    Some((
                        t.name().to_string(),
                        spread(
                            &runs
                                .iter()
                                .map(|r| r.summary.latency_p99_us as f64)
                                .collect::<Vec<_>>(),
                        )?,
                    ))
                })
                .collect();
            bar_chart(
                &format!("{t}: latency (p50, p99), µs"),
                &[("p50", &bars), ("p99", &p99)],
            )?
        } else {
            bar_chart(&format!("{t}: {metric}"), &[(metric, &bars)])?
        };
        let name = format!("{}.svg", slug(*scenario, variant));
        let _ = writeln!(md, "\n![{t}](plots/{name})\n");
        let _ = writeln!(html, "{svg}");
        plots.push((name, svg));
    }
    // Curves across variants: pattern counts, and matcher counts.
    for (scenario, metric, xlabel) in [
        (Scenario::Patterns, "published/s", "pattern subscriptions"),
        (Scenario::Scale, "delivered/s", "matchers"),
    ] {
        let mut series: BTreeMap<TargetKind, Vec<(f64, f64)>> = BTreeMap::new();
        for ((s, _), by_target) in &groups {
            if *s != scenario {
                continue;
            }
            for (t, runs) in by_target {
                let x = match scenario {
                    Scenario::Scale => runs[0].matchers.unwrap_or(0) as f64,
                    _ => runs[0].params.subscribers as f64,
                };
                let (_, f) = headline(scenario);
                if let Some(sp) = spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()) {
                    series.entry(*t).or_default().push((x, sp.median));
                }
            }
        }
        if series.values().any(|v| v.len() > 1) {
            let log_x = scenario == Scenario::Patterns;
            let svg = curve(
                &format!("{}: {metric} by {xlabel}", scenario.name()),
                xlabel,
                &series,
                log_x,
            )?;
            let name = format!("{}-curve.svg", scenario.name());
            let _ = writeln!(
                md,
                "## {} curve\n\n![{}](plots/{name})\n",
                scenario.name(),
                scenario.name()
            );
            let _ = writeln!(html, "<h2>{} curve</h2>{svg}", scenario.name());
            plots.push((name, svg));
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "## Failed runs\n");
        let _ = writeln!(html, "<h2>Failed runs</h2><ul>");
        for f in &failures {
            let line = format!(
                "{} {} {} rep {}: {}",
                f.scenario, f.variant, f.target, f.rep, f.error
            );
            let _ = writeln!(md, "- {line}");
            let _ = writeln!(html, "<li>{}</li>", escape(&line));
        }
        let _ = writeln!(html, "</ul>");
    }
    for (name, svg) in &plots {
        std::fs::write(plots_dir.join(name), svg)?;
    }
    std::fs::write(out.join("report.md"), md)?;
    std::fs::write(out.join("report.html"), html)?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}

/// The chart type both plots draw on.
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws the series labels of `chart`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)
}

/// Bars per target (one series per entry of `series`, side by side) with min–max whiskers.
pub fn bar_chart(caption: &str, series: &[(&str, &[(String, Spread)])]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let names: Vec<String> = series
            .first()
            .map(|(_, v)| v.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        let top = series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|(_, s)| s.max))
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.15;
        let n = names.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
            .map_err(plot_err)?;
        let labels = names.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| fmt_rate(*y))
            .draw()
            .map_err(plot_err)?;
        let k = series.len().max(1) as f64;
        let width = 0.7 / k;
        for (si, (label, values)) in series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let x0 = |i: usize| i as f64 - 0.35 + si as f64 * width;
            chart
                .draw_series(values.iter().enumerate().map(|(i, (_, s))| {
                    Rectangle::new(
                        [(x0(i), 0.0), (x0(i) + width * 0.9, s.median)],
                        color.filled(),
                    )
                }))
                .map_err(plot_err)?
                .label(*label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            chart
                .draw_series(values.iter().enumerate().map(|(i, (_, s))| {
                    let xm = x0(i) + width * 0.45;
                    PathElement::new(vec![(xm, s.min), (xm, s.max)], BLACK.stroke_width(1))
                }))
                .map_err(plot_err)?;
        }
        if series.len() > 1 {
            legend(&mut chart)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// One line per target over `x`.
pub fn curve(
    caption: &str,
    xlabel: &str,
    series: &BTreeMap<TargetKind, Vec<(f64, f64)>>,
    log_x: bool,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let xs = series.values().flatten().map(|p| p.0);
        let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let top = series
            .values()
            .flatten()
            .map(|p| p.1)
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        let tx = |x: f64| if log_x { x.max(1.0).log10() } else { x };
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(tx(xmin) - 0.1..tx(xmax) + 0.1, 0f64..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(if log_x {
                format!("{xlabel} (log)")
            } else {
                xlabel.to_string()
            })
            .x_label_formatter(&|x| {
                let v = if log_x { 10f64.powf(*x) } else { *x };
                fmt_rate(v)
            })
            .y_label_formatter(&|y| fmt_rate(*y))
            .draw()
            .map_err(plot_err)?;
        for (i, (target, points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts: Vec<(f64, f64)> = points.iter().map(|(x, y)| (tx(*x), *y)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(target.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(plot_err)?;
        }
        legend(&mut chart)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_medians_and_extremes() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(spread(&[]).is_none());
        assert_eq!(spread(&[f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    fn result(target: &str, delivered: u64, server_cpu_s: f64, generator_cpu_s: f64) -> RunResult {
        let line = format!(
            r#"{{"scenario":"fanin","target":"{target}","variant":"","params":{{"scenario":"fanin","publishers":1,"subscribers":1,"topics":1,"connections":1,"payload":128,"rate":null,"duration":1.0,"in_flight":1,"matchers":[],"at_least_once":false}},"summary":{{"published":{delivered},"published_per_s":1.0,"expected":{delivered},"delivered":{delivered},"delivered_per_s":1.0,"delivery_ratio":1.0,"latency_p50_us":1,"latency_p99_us":1,"latency_p999_us":1,"latency_max_us":1,"received_bytes":0,"wasted_bytes":0,"foreign":0}},"server_cpu_s":{server_cpu_s},"server_rss_peak_bytes":1,"generator_cpu_s":{generator_cpu_s},"generator_saturated":false,"stalls":0,"matchers":null,"per_node_cpu_s":null,"rep":0}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn costs_per_delivery_and_the_ratio_to_nats() {
        let sift = result("sift", 1_000_000, 2.0, 3.0);
        let nats = result("nats", 2_000_000, 1.0, 2.0);
        assert_eq!(server_us_per_delivery(&sift), 2.0);
        assert_eq!(generator_us_per_delivery(&nats), 1.0);
        let mut by_target = BTreeMap::new();
        by_target.insert(TargetKind::Sift, vec![&sift]);
        by_target.insert(TargetKind::Nats, vec![&nats]);
        assert_eq!(
            versus_nats(&by_target).unwrap(),
            "Per delivery, Sift ÷ NATS: server CPU 4.00×, generator (SDK) CPU 3.00×."
        );
        by_target.remove(&TargetKind::Nats);
        assert_eq!(versus_nats(&by_target), None, "no NATS in the run");
        let row = &rows(&by_target)[0];
        assert_eq!(row.len(), HEADERS.len());
        assert_eq!(row[11], "2.00");
    }

    #[test]
    fn charts_render_to_svg() {
        let bars = vec![
            (
                "sift".to_string(),
                Spread {
                    median: 5.0,
                    min: 4.0,
                    max: 6.0,
                },
            ),
            (
                "nats".to_string(),
                Spread {
                    median: 3.0,
                    min: 3.0,
                    max: 3.0,
                },
            ),
        ];
        let svg = bar_chart("t", &[("delivered/s", &bars)]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("sift"));
        let mut series = BTreeMap::new();
        series.insert(TargetKind::Sift, vec![(10.0, 5.0), (1000.0, 4.0)]);
        let svg = curve("c", "patterns", &series, true).unwrap();
        assert!(svg.contains("<svg"));
    }
}
