//! Progress reporting: a bar with rate and ETA on a TTY, a log line every 10 s otherwise.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// True when progress bars can be drawn (stderr is a terminal).
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// Writes log lines to stderr without tearing progress bars.
#[derive(Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        multi().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Reports progress of one stage.
pub struct Progress {
    label: String,
    unit: &'static str,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    done: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// A reporter; draws a bar only when `enabled` and stderr is a TTY.
    pub fn new(label: &str, total: Option<u64>, unit: &'static str, enabled: bool) -> Progress {
        let bar = (enabled && stderr_is_tty()).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                format!(
                    "{{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} · {{per_sec}} · ETA {{eta}}"
                )
            } else {
                format!("{{msg}} {{spinner}} {{human_pos}} {unit} · {{per_sec}}")
            };
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            multi().add(bar)
        });
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            unit,
            total,
            bar,
            done: 0,
            started: now,
            last_log: now,
        }
    }

    /// Adds `n` units of work done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            self.log_line();
        }
    }

    /// Units done so far.
    pub fn position(&self) -> u64 {
        self.done
    }

    fn log_line(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        match self.total {
            Some(t) if rate > 0.0 => {
                let eta = t.saturating_sub(self.done) as f64 / rate;
                tracing::info!(
                    "{}: {}/{} {} ({:.0}/s, ETA {:.0}s)",
                    self.label,
                    self.done,
                    t,
                    self.unit,
                    rate,
                    eta
                )
            }
            _ => tracing::info!(
                "{}: {} {} ({:.0}/s)",
                self.label,
                self.done,
                self.unit,
                rate
            ),
        }
    }

    /// Ends the bar (or logs a final line).
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            multi().remove(bar);
        }
        self.log_line();
    }
}
