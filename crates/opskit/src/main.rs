//! The `opskit` binary: parse arguments, dispatch, map the outcome to an exit code.
//! All behaviour lives in the library crates; see `opskit::run`.

fn main() -> std::process::ExitCode {
    opskit::run(std::env::args_os())
}
