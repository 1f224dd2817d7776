//! Logging: human output on stderr by default, JSON lines for log shippers.

use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Readable lines (and progress bars on a TTY).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `verbosity`: -1 quiet (warnings and errors), 0 info,
/// 1 debug, 2+ trace. `RUST_LOG` overrides when set.
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},hyper=warn,rustls=warn,ureq=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::progress::LogWriter::default);
    let _ = match format {
        LogFormat::Human => builder
            .with_target(false)
            .with_ansi(crate::progress::stderr_is_tty() && !crate::progress::no_color())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
