//! The live view of a run: a progress bar on a terminal, a plain line a second otherwise.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shows how a run is going on stderr.
#[derive(Debug)]
pub struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// A view for the run called `label`; `quiet` shows nothing.
    pub fn new(label: &str, total: Duration, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total.as_millis() as u64),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_owned());
            bar
        });
        Progress {
            label: label.into(),
            bar,
            quiet,
        }
    }

    /// A second has passed: `elapsed` into the run, with these counts so far and these rates
    /// over the last second.
    pub fn tick(
        &self,
        elapsed: Duration,
        published: u64,
        delivered: u64,
        pub_rate: f64,
        del_rate: f64,
    ) {
        let msg = format!(
            "published {published} ({}/s), delivered {delivered} ({}/s)",
            si(pub_rate),
            si(del_rate)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(msg);
            }
            None if !self.quiet => {
                let _ = writeln!(
                    std::io::stderr(),
                    "{} {:>5.1}s {msg}",
                    self.label,
                    elapsed.as_secs_f64()
                );
            }
            None => {}
        }
    }

    /// The run is over.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// A note for the user (setup steps, the drain).
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(text.to_owned()),
            None if !self.quiet => {
                let _ = writeln!(std::io::stderr(), "{} {text}", self.label);
            }
            None => {}
        }
    }
}

/// 1234567 → "1.23M".
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
