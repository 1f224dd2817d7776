//! `opskit generate completions <SHELL>` and `opskit generate man [--dir DIR]`: generated from
//! the same clap definitions as `--help`, so they never disagree with it.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;
use opskit_core::{ExitStatus, OpsError};

use crate::cli::Cli;

/// `opskit generate` arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to generate.
    #[command(subcommand)]
    pub what: Generated,
}

/// Things that can be generated.
#[derive(Debug, Subcommand)]
pub enum Generated {
    /// Shell completion script on stdout
    /// (`opskit generate completions bash > /etc/bash_completion.d/opskit`).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// The man page opskit(1) on stdout; with --dir, one page per command written into DIR
    /// (`opskit generate man --dir /usr/local/share/man/man1`).
    Man {
        /// Write opskit.1 and a page for every command (opskit-nginx-apply.1, …) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Runs `opskit generate`. Everything is generated into memory first and written in one go,
/// so a closed pipe (`| head`) cannot interrupt a generator halfway.
pub fn run(args: GenerateArgs) -> Result<ExitStatus, OpsError> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    match args.what {
        Generated::Completions { shell } => {
            clap_complete::generate(shell, &mut cmd, "opskit", &mut buf);
        }
        Generated::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(cmd, &dir))
                .map_err(|e| {
                    OpsError::failed(format!("writing man pages to {}: {e}", dir.display()))
                })?;
            crate::outln!("man pages written to {} (try: man opskit)", dir.display());
            return Ok(ExitStatus::Success);
        }
        Generated::Man { dir: None } => single_page(cmd, &mut buf)
            .map_err(|e| OpsError::failed(format!("rendering the man page: {e}")))?,
    }
    crate::out!("{}", String::from_utf8_lossy(&buf));
    Ok(ExitStatus::Success)
}

/// opskit(1) alone: the commands are listed by name (their own pages exist only when
/// installed with `--dir`), and SEE ALSO names only what is there either way.
fn single_page(cmd: clap::Command, w: &mut Vec<u8>) -> std::io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    w.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        w.extend_from_slice(
            format!(
                ".TP\n\\fBopskit {}\\fR\n{}\n",
                sub.get_name(),
                roff_escape(&about)
            )
            .as_bytes(),
        );
    }
    w.extend_from_slice(
        b".SH \"SEE ALSO\"\n\\fBopskit\\fR \\fIcommand\\fR \\fB\\-\\-help\\fR for each command; \
          one page per command: \\fBopskit generate man \\-\\-dir /usr/local/share/man/man1\\fR.\n",
    );
    man.render_version_section(w)?;
    Ok(())
}

/// Escapes text for a roff paragraph (backslashes, hyphens, a leading dot).
fn roff_escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
