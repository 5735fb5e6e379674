//! The chaos run's reports: `chaos.json` (everything), `chaos.md` (a short verdict with the
//! faults and the per-subscription table) and `chaos-timeline.svg` (deliveries per second,
//! the faults marked).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::ChaosReport;

/// Writes the three files into `dir`.
pub fn write(dir: &Path, report: &ChaosReport) -> Result<()> {
    std::fs::write(
        dir.join("chaos.json"),
        serde_json::to_string_pretty(report)?,
    )
    .context("cannot write chaos.json")?;
    std::fs::write(dir.join("chaos.md"), markdown(report)).context("cannot write chaos.md")?;
    std::fs::write(dir.join("chaos-timeline.svg"), timeline_svg(report)?)
        .context("cannot write chaos-timeline.svg")?;
    Ok(())
}

/// The markdown report.
pub fn markdown(r: &ChaosReport) -> String {
    let v = &r.verdict;
    let mut s = String::new();
    let _ = writeln!(s, "# Chaos run (seed {})\n", r.seed);
    let _ = writeln!(
        s,
        "{} matchers at the start (R = {}), {} acknowledged publishes ({} failed) over {:.1} s at {} publishes/s, {} notifications received.\n",
        r.matchers,
        r.replicas,
        v.acked,
        r.failed_publishes,
        r.duration_ms as f64 / 1000.0,
        r.publish_rate,
        r.delivered
    );
    let _ = writeln!(
        s,
        "**Missing: {} · duplicates past the SDK: {} · out of order per (publisher, topic): {} · spurious: {}**\n",
        v.missing, v.duplicates, v.out_of_order, v.spurious
    );
    for (name, at) in &r.ended {
        let _ = writeln!(
            s,
            "Subscription {name} ended at {:.1} s.\n",
            *at as f64 / 1000.0
        );
    }
    if !r.publish_errors.is_empty() {
        let _ = writeln!(
            s,
            "Publishes that failed: {} ({} deliveries of such events anyway); first errors: {}\n",
            r.failed_publishes,
            v.unknown,
            r.publish_errors.join("; ")
        );
    }
    for skip in &r.skipped {
        let _ = writeln!(s, "Skipped: {skip}\n");
    }
    let _ = writeln!(
        s,
        "| at (s) | fault | target | what happened | delivery gap (ms) | longest topic pause (ms) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for f in &r.faults {
        let _ = writeln!(
            s,
            "| {:.1} | {} | {} | {} | {} | {} |",
            f.at_ms as f64 / 1000.0,
            f.kind,
            f.target,
            f.detail,
            f.gap_ms,
            f.topic_pause_ms
        );
    }
    let p = &r.topic_pauses;
    let _ = writeln!(
        s,
        "\nPer-topic pauses (the longest stretch without a delivery of one topic's events to one subscription or group, per window; filtered subscriptions left out), ms:\n"
    );
    let _ = writeln!(
        s,
        "| windows | (subscription, topic) × window | p50 | p99 | max |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (name, spread) in [
        ("handoffs (join, drain, remove, term)", p.handoffs),
        ("other faults", p.other_faults),
        ("quiet (no fault)", p.quiet),
    ] {
        if let Some(x) = spread {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                x.n, x.p50, x.p99, x.max
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| subscription | mode | owed | got | missing | duplicates | out of order |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for u in &v.units {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            u.unit, u.mode, u.owed, u.got, u.missing, u.duplicates, u.out_of_order
        );
    }
    let _ = writeln!(s, "\n![deliveries per second](chaos-timeline.svg)");
    s
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}

/// Deliveries per second (from the 100 ms timeline), with a red line at each fault.
pub fn timeline_svg(r: &ChaosReport) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let points: Vec<(f64, f64)> = r
            .timeline
            .iter()
            .enumerate()
            .map(|(i, c)| (i as f64 / 10.0, *c as f64 * 10.0))
            .collect();
        let xmax = points.last().map_or(1.0, |p| p.0).max(1.0);
        let ymax = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .caption("deliveries per second, faults marked", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("deliveries/s")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(points, &BLUE))
            .map_err(plot_err)?;
        for f in &r.faults {
            let x = f.at_ms as f64 / 1000.0;
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, ymax)], RED.stroke_width(1)))
                .map_err(plot_err)?
                .label(f.kind.to_string());
            chart
                .draw_series(std::iter::once(Text::new(
                    f.kind.to_string(),
                    (x, ymax * 0.95),
                    ("sans-serif", 12),
                )))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}
