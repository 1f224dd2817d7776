//! The `opskit` command line: argument definitions ([`cli`]) and one module per command
//! ([`commands`]). Exit codes: 0 done, 1 failed (runs alert), 2 bad usage or config,
//! 3 a precondition refused the run (nothing changed).

#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod commands;

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser as _;
use opskit_core::{ExitStatus, OpsError};

/// Set once stdout's reader has gone away (`opskit … | head`): later output is dropped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes command output to stdout. When the reader has gone away (`| head`), the rest of the
/// output is dropped and the command still ends with its own exit code: no panic, no noise.
pub fn write_stdout(args: std::fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `print!` to stdout through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

/// `println!` to stdout through [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// True when stdout is a pipe whose reader has gone away (poll reports an error on it).
fn stdout_reader_gone() -> bool {
    let mut fds = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut fds, 1, 0) };
    n == 1 && fds.revents & libc::POLLERR != 0
}

/// Any `println!` left (in code that does not use [`out!`]) panics when stdout's reader is
/// gone; end quietly then, with 141 as a shell reports a process killed by a closed pipe.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_reader_gone() {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Runs opskit with these arguments and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    opskit_core::logging::init(cli.global.log_format.into(), cli.global.verbosity());
    let status = match commands::dispatch(cli) {
        Ok(status) => status,
        Err(e) => {
            report_error(&e);
            e.status()
        }
    };
    ExitCode::from(status.code())
}

fn report_error(e: &OpsError) {
    let kind = match e.status() {
        ExitStatus::Usage => "error",
        ExitStatus::Refused => "refused",
        _ => "failed",
    };
    eprintln!("opskit: {kind}: {e}");
}
