//! Progress for long commands: a bar on a terminal, plain lines (at most one
//! every few seconds, plus each phase's end) when output is a file or pipe.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// One phase's progress (e.g. "dump" over tables and bytes).
pub struct Progress {
    phase: String,
    bar: Option<ProgressBar>,
    total: u64,
    every: Duration,
    last_line: Option<Instant>,
    started: Instant,
}

impl Progress {
    /// A phase of `total` units; `bytes` says whether units are bytes.
    /// Draws a bar when stderr is a terminal, else prints lines every `every`.
    pub fn new(phase: &str, total: u64, bytes: bool, every: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = if bytes {
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {msg}"
            } else {
                "{prefix:>8} [{bar:30}] {pos}/{len} {msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(phase.to_owned());
            bar
        });
        Progress {
            phase: phase.to_owned(),
            bar,
            total,
            every,
            last_line: None,
            started: Instant::now(),
        }
    }

    /// Progress is now `done` units; `detail` says what is going on.
    pub fn set(&mut self, done: u64, detail: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done.min(self.total));
                bar.set_message(detail.to_owned());
            }
            None => {
                if self.last_line.is_none_or(|t| t.elapsed() >= self.every) {
                    self.last_line = Some(Instant::now());
                    eprintln!("{}: {} {detail}", self.phase, self.fraction(done));
                }
            }
        }
    }

    fn fraction(&self, done: u64) -> String {
        if self.total == 0 {
            return format!("{done}");
        }
        format!(
            "{done}/{} ({:.0}%)",
            self.total,
            100.0 * done.min(self.total) as f64 / self.total as f64
        )
    }

    /// The phase is over.
    pub fn finish(self, summary: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}: done in {:.1}s{}{summary}",
            self.phase,
            self.started.elapsed().as_secs_f64(),
            if summary.is_empty() { "" } else { ": " }
        );
    }
}

/// A status line that is redrawn in place on a terminal and printed every
/// `every` otherwise (for open-ended work such as catch-up).
pub struct Status {
    bar: Option<ProgressBar>,
    every: Duration,
    last_line: Option<Instant>,
}

impl Status {
    /// A status line.
    pub fn new(every: Duration) -> Status {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Status {
            bar,
            every,
            last_line: None,
        }
    }

    /// Shows `line` (printed only if due, when not a terminal); `force`
    /// prints it regardless.
    pub fn show(&mut self, line: &str, force: bool) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(line.to_owned());
                bar.tick();
            }
            None => {
                if force || self.last_line.is_none_or(|t| t.elapsed() >= self.every) {
                    self.last_line = Some(Instant::now());
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Leaves the last line on screen.
    pub fn finish(self, line: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(line.to_owned()),
            None => eprintln!("{line}"),
        }
    }
}
