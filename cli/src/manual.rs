//! `blit completions SHELL` and `blit man`: shell completions and man pages generated from the
//! same clap definitions as `--help`, so the three cannot disagree.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use crate::exit::Exit;
use crate::output::write_stdout;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for (e.g. `blit completions bash > /etc/bash_completion.d/blit`).
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write blit.1 and one page per subcommand (blit-xfer.1, ...) into DIR (created if
    /// missing) instead of printing blit.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> Exit {
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "blit", &mut buf);
    write_stdout(&String::from_utf8_lossy(&buf));
    Exit::Ok
}

pub fn man(args: &ManArgs) -> Exit {
    let result = match &args.out {
        Some(dir) => write_pages(dir).map(|pages| {
            for p in pages {
                println!("{}", p.display());
            }
        }),
        None => render(&crate::Cli::command()).map(|page| write_stdout(&page)),
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("blit: error: {e:#}");
            Exit::Fatal
        }
    }
}

/// One roff page.
fn render(cmd: &clap::Command) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf).context("cannot render a man page")?;
    String::from_utf8(buf).context("a man page is not UTF-8")
}

/// blit.1 and `blit-SUB.1` for every (visible) subcommand; returns the files written.
pub fn write_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = crate::Cli::command();
    // Subcommands' pages show `blit xfer`, not `xfer`, in their synopsis.
    cmd.build();
    let mut written = Vec::new();
    let mut pages = vec![("blit".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("blit-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone().name(name).display_name(format!("blit {}", sub.get_name())),
        ));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, render(&page)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every long option `--help` lists for a subcommand appears in its man page.
    #[test]
    fn man_pages_name_every_flag_of_help() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = write_pages(dir.path()).expect("pages");
        let cmd = crate::Cli::command();
        let subs: Vec<_> =
            cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").collect();
        assert_eq!(pages.len(), subs.len() + 1);
        for sub in subs {
            let page =
                std::fs::read_to_string(dir.path().join(format!("blit-{}.1", sub.get_name())))
                    .expect("page");
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    // roff escapes '-' as '\-'.
                    let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(
                        page.contains(&roff),
                        "blit {} --{long} missing from its man page",
                        sub.get_name()
                    );
                }
            }
        }
    }

    #[test]
    fn completions_cover_subcommands_and_flags() {
        let mut cmd = crate::Cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "blit", &mut buf);
        let text = String::from_utf8(buf).expect("utf-8");
        for word in ["xfer", "daemon", "bench", "--mirror", "--transport", "--color"] {
            assert!(text.contains(word), "bash completion lacks {word}");
        }
    }
}
