//! The one way opskit runs an external program (nginx, curl, iptables-restore, mariadb,
//! nsupdate, socat, ssh-keygen, …): a time limit on every call, secrets through stdin (never
//! argv), and the output captured so an error can show what the program said.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use opskit_core::proc;
//!
//! let mut cmd = Command::new("mariadb");
//! cmd.args(["--batch", "-e", "SELECT 1"]);
//! let out = proc::run(&mut cmd, Duration::from_secs(10))?.checked()?;
//! println!("{}", out.stdout_text());
//! # anyhow::Ok(())
//! ```

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// What a finished program printed and returned.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command as an operator would type it (see [`display`]).
    pub command: String,
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Output {
    /// True when the program exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// `Ok(self)` when it exited with 0, else an error naming the command, its exit code and
    /// what it printed (stderr, then stdout, each cut to its last 2,000 bytes).
    pub fn checked(self) -> anyhow::Result<Output> {
        if self.success() {
            return Ok(self);
        }
        let code = match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        };
        let said = [tail(&self.stderr), tail(&self.stdout)]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        if said.is_empty() {
            bail!("`{}` failed ({code}) and printed nothing", self.command)
        }
        bail!("`{}` failed ({code}): {said}", self.command)
    }
}

/// The last 2,000 bytes of `b`, trimmed, as text.
fn tail(b: &[u8]) -> String {
    let start = b.len().saturating_sub(2000);
    String::from_utf8_lossy(&b[start..]).trim().to_string()
}

/// The command as an operator would type it (for plans, errors and logs): arguments with
/// spaces or shell characters are single-quoted.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One word quoted for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '@' | '+' | '%')
        });
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Runs `cmd` to completion with no input, killing it after `timeout`. `Err` when it cannot
/// be started or ran out of time; a non-zero exit is an `Ok` (use [`Output::checked`]).
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], writing `input` to the program's stdin and closing it. This is how SQL,
/// passwords and update scripts reach a program, so they never show in `ps`.
///
/// The program dies with the thread that started it (`PR_SET_PDEATHSIG`), so a killed opskit
/// leaves no orphan behind; it stays in opskit's process group, so Ctrl-C reaches it too.
pub fn run_with_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let shown = display(cmd);
    let parent = std::process::id() as i32;
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 || libc::getppid() != parent
            {
                return Err(std::io::Error::other("the parent exited"));
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        // A thread, so a program that does not read its input cannot block us past the deadline.
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let deadline = started + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{shown}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{shown}` did not finish within {} and was killed",
                human_secs(timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A grandchild that inherited the pipes may keep them open: wait a little, not forever,
    // and keep what was read by then.
    let grace = Instant::now() + Duration::from_secs(2);
    Ok(Output {
        command: shown,
        code: status.code(),
        stdout: stdout.take(grace),
        stderr: stderr.take(grace),
        elapsed: started.elapsed(),
    })
}

/// A pipe being read to its end on a thread.
struct Collector {
    bytes: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Collector {
    /// Everything read once the pipe closed, or what was read by `deadline`.
    fn take(self, deadline: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> Collector {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (tx, done) = mpsc::channel();
    let sink = Arc::clone(&bytes);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    });
    Collector { bytes, done }
}

fn human_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_exit_code_are_captured() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr_text(), "err\n");
        let e = out.checked().unwrap_err().to_string();
        assert!(e.contains("exit code 3") && e.contains("err"), "{e}");
        assert!(
            e.starts_with("`sh -c 'echo out; echo err >&2; exit 3'`"),
            "{e}"
        );
    }

    #[test]
    fn input_goes_to_stdin_not_argv() {
        let out = run_with_input(
            &mut Command::new("cat"),
            Some(b"s3cret"),
            Duration::from_secs(10),
        )
        .unwrap()
        .checked()
        .unwrap();
        assert_eq!(out.stdout, b"s3cret");
        assert_eq!(out.command, "cat");
    }

    #[test]
    fn a_program_past_its_time_is_killed() {
        let clock = Instant::now();
        let e = run(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(clock.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("did not finish within 0.2 s"), "{e}");
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hang_us() {
        let clock = Instant::now();
        let out = run(
            Command::new("sh").args(["-c", "sleep 20 & echo started"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout_text(), "started\n");
        assert!(
            clock.elapsed() < Duration::from_secs(8),
            "{:?}",
            clock.elapsed()
        );
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = run(
            &mut Command::new("/nonexistent/prog"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("starting `/nonexistent/prog`"),
            "{e:#}"
        );
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut c = Command::new("iptables");
        c.args([
            "-A",
            "DOCKER-USER",
            "-m",
            "comment",
            "--comment",
            "it's A",
            "",
        ]);
        assert_eq!(
            display(&c),
            "iptables -A DOCKER-USER -m comment --comment 'it'\\''s A' ''"
        );
    }
}
