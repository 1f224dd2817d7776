//! Progress reporting: a bar with rate and ETA on a TTY, a log line every 10 s otherwise;
//! numbers as people read them (`211,823/s`, `37.4 MiB`), and colour only on a terminal
//! without `NO_COLOR`.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// True when progress bars can be drawn (stderr is a terminal).
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// True when `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// `1234567` → `1,234,567`.
pub fn human_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate per second: `211,823/s` (whole units), or `0.7/s` below 10.
pub fn human_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec < 0.0 {
        return "-/s".into();
    }
    if per_sec < 10.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{}/s", human_count(per_sec.round() as u64))
    }
}

/// A size in binary units: `512 B`, `37.4 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `done` units of `unit` as people read them: a size for `bytes`, else a count.
fn amount(done: u64, unit: &str) -> String {
    if unit == "bytes" {
        human_bytes(done)
    } else {
        format!("{} {unit}", human_count(done))
    }
}

/// How verdict words are printed: plain, or in colour on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// No escape codes (pipes, files, JSON, `NO_COLOR`).
    Plain,
    /// ANSI colours.
    Color,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    pub fn for_stdout() -> Style {
        if std::io::stdout().is_terminal() && !no_color() {
            Style::Color
        } else {
            Style::Plain
        }
    }

    fn paint(self, code: &str, word: &str) -> String {
        match self {
            Style::Plain => word.to_string(),
            Style::Color => format!("\x1b[{code}m{word}\x1b[0m"),
        }
    }

    /// A passing verdict (bold green).
    pub fn pass(self, word: &str) -> String {
        self.paint("1;32", word)
    }

    /// A failing verdict (bold red).
    pub fn fail(self, word: &str) -> String {
        self.paint("1;31", word)
    }

    /// Something not run (dim).
    pub fn dim(self, word: &str) -> String {
        self.paint("2", word)
    }
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
    // Boxed: keeps `Progress` small enough to travel inside a `Mutex` by value.
    label: Box<str>,
    unit: &'static str,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    done: u64,
    started: Instant,
    last_log: Instant,
    show_rate: bool,
}

/// The template key `{hrate}`: the rate as [`human_rate`] or, for bytes, a size per second.
fn rate_key(
    unit: &'static str,
) -> impl Fn(&ProgressState, &mut dyn std::fmt::Write) + Send + Sync + Clone + 'static {
    move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let per_sec = state.per_sec();
        let _ = if unit == "bytes" {
            write!(w, "{}/s", human_bytes(per_sec as u64))
        } else {
            write!(w, "{}", human_rate(per_sec))
        };
    }
}

/// The template key `{hpos}`: the position as [`amount`] (with the total when known).
fn position_key(
    unit: &'static str,
) -> impl Fn(&ProgressState, &mut dyn std::fmt::Write) + Send + Sync + Clone + 'static {
    move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = match state.len() {
            Some(total) if unit == "bytes" => {
                write!(w, "{} / {}", human_bytes(state.pos()), human_bytes(total))
            }
            Some(total) => write!(
                w,
                "{}/{} {unit}",
                human_count(state.pos()),
                human_count(total)
            ),
            None => write!(w, "{}", amount(state.pos(), unit)),
        };
    }
}

impl Progress {
    /// A reporter; draws a bar only when `enabled` and stderr is a TTY.
    pub fn new(label: &str, total: Option<u64>, unit: &'static str, enabled: bool) -> Progress {
        let bar = (enabled && stderr_is_tty()).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(style(total.is_some(), true, unit));
            bar.set_message(label.to_string());
            multi().add(bar)
        });
        let now = Instant::now();
        Progress {
            label: label.into(),
            unit,
            total,
            bar,
            done: 0,
            started: now,
            last_log: now,
            show_rate: true,
        }
    }

    /// Drops the rate and ETA (for a few slow stages, where "0.1/s" says nothing).
    pub fn without_rate(mut self) -> Progress {
        self.show_rate = false;
        if let Some(bar) = &self.bar {
            bar.set_style(style(self.total.is_some(), false, self.unit));
        }
        self
    }

    /// Replaces the label (e.g. the stage now running).
    pub fn set_message(&mut self, label: &str) {
        self.label = label.into();
        if let Some(bar) = &self.bar {
            bar.set_message(label.to_string());
        }
    }

    /// Adds `n` units of work done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            tracing::info!("{}", self.line());
        }
    }

    /// Units done so far.
    pub fn position(&self) -> u64 {
        self.done
    }

    /// The progress as one log line: `export: 1,234,567/2,000,000 docs (211,823/s, ETA 4s)`.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let done = match self.total {
            Some(t) if self.unit == "bytes" => {
                format!("{} / {}", human_bytes(self.done), human_bytes(t))
            }
            Some(t) => format!(
                "{}/{} {}",
                human_count(self.done),
                human_count(t),
                self.unit
            ),
            None => amount(self.done, self.unit),
        };
        if !self.show_rate {
            return format!("{}: {done} in {secs:.1} s", self.label);
        }
        let rate_text = if self.unit == "bytes" {
            format!("{}/s", human_bytes(rate as u64))
        } else {
            human_rate(rate)
        };
        match self.total {
            Some(t) if rate > 0.0 => {
                let eta = t.saturating_sub(self.done) as f64 / rate;
                format!("{}: {done} ({rate_text}, ETA {eta:.0}s)", self.label)
            }
            _ => format!("{}: {done} ({rate_text})", self.label),
        }
    }

    /// Ends the bar (or logs a final line).
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            multi().remove(bar);
        }
        tracing::info!("{}", self.line());
    }
}

fn style(bounded: bool, rate: bool, unit: &'static str) -> ProgressStyle {
    let template = match (bounded, rate) {
        (true, true) => "{msg} [{bar:30}] {hpos} · {hrate} · ETA {eta}",
        (true, false) => "{msg} [{bar:30}] {hpos}",
        (false, true) => "{msg} {spinner} {hpos} · {hrate}",
        (false, false) => "{msg} {spinner} {hpos}",
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .with_key("hrate", rate_key(unit))
        .with_key("hpos", position_key(unit))
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(211_823), "211,823");
        assert_eq!(human_count(60_000_000), "60,000,000");
        assert_eq!(human_rate(211_823.4), "211,823/s");
        assert_eq!(human_rate(0.66), "0.7/s");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(39_216_742), "37.4 MiB");
        assert_eq!(human_bytes(12 * 1024 * 1024 * 1024), "12.0 GiB");
    }

    #[test]
    fn log_lines_have_no_raw_floats() {
        let mut p = Progress::new("export", Some(2_000_000), "docs", false);
        p.inc(1_234_567);
        let line = p.line();
        assert!(
            line.starts_with("export: 1,234,567/2,000,000 docs ("),
            "{line}"
        );
        assert!(line.contains("/s, ETA "), "{line}");
        let mut b = Progress::new("upload", Some(40 * 1024 * 1024), "bytes", false);
        b.inc(39_216_742);
        assert!(
            b.line().starts_with("upload: 37.4 MiB / 40.0 MiB ("),
            "{}",
            b.line()
        );
        let mut g = Progress::new("probe", Some(7), "groups", false).without_rate();
        g.inc(3);
        assert!(
            g.line().starts_with("probe: 3/7 groups in 0."),
            "{}",
            g.line()
        );
    }

    #[test]
    fn plain_style_has_no_escape_codes() {
        assert_eq!(Style::Plain.pass("PASS"), "PASS");
        assert_eq!(Style::Color.fail("FAIL"), "\x1b[1;31mFAIL\x1b[0m");
    }
}
