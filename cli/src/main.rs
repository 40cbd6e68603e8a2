//! `blit`: the command-line front end. Parses arguments, wires the engine, maps errors to
//! documented exit codes. All transfer logic lives in the library crates.

mod bench;
mod daemon;
mod delta_auto;
mod exit;
mod filters;
mod manual;
mod ops;
mod output;
mod topo;
mod units;
mod xfer;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "blit", version, about = "Fast file transfer: RDMA first, zero-copy TCP fallback")]
pub(crate) struct Cli {
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Colours in log lines on stderr: auto (only when stderr is a terminal and NO_COLOR is
    /// unset), always or never.
    #[arg(long, value_name = "WHEN", default_value = "auto", global = true, value_parser = ["auto", "always", "never"])]
    color: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make TARGET a copy of SOURCE's contents (like `rsync -a SOURCE/ TARGET/`); either side
    /// may be a daemon (`blit://HOST[:PORT]/path`).
    Xfer(xfer::XferArgs),
    /// Serve a directory to blit clients (push and pull).
    Daemon(daemon::DaemonArgs),
    /// Show sockets, NUMA nodes, NICs, verbs devices and disks as blit sees them.
    Topo(topo::TopoArgs),
    /// Measure blit across transports, streams, chunk sizes and datasets, next to iperf3,
    /// ib_write_bw, rsync, cp and tar baselines; CPU cost per side; reports, plots, history.
    Bench(Box<bench::BenchArgs>),
    /// List what a daemon holds: blit://HOST[:PORT]/path (-l long, -R recursive).
    Ls(ops::LsArgs),
    /// Disk usage below blit://HOST[:PORT]/path (-s total only, -b apparent bytes).
    Du(ops::DuArgs),
    /// Remove blit://HOST[:PORT]/path from a daemon (-r for a directory and its contents).
    Rm(ops::RmArgs),
    /// Make a directory on a daemon: blit://HOST[:PORT]/path (-p with parents).
    Mkdir(ops::MkdirArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(manual::CompletionsArgs),
    /// Print blit's man page, or write one per subcommand with --out DIR.
    Man(manual::ManArgs),
}

/// Whether log lines on stderr get ANSI colours: a log file or a pipe gets plain text unless
/// asked (`--color always`), and `NO_COLOR` (no-color.org) or `TERM=dumb` turn `auto` off.
fn colours(when: &str, stderr_is_terminal: bool, no_color: bool, dumb: bool) -> bool {
    match when {
        "always" => true,
        "never" => false,
        _ => stderr_is_terminal && !no_color && !dumb,
    }
}

fn init_logging(verbose: u8, ansi: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// stderr for log lines. tracing-subscriber escapes ESC and C1 controls inside logged values but
/// not line breaks, so a file name or a peer's message in a log line could still start a line of
/// its own: each formatted event (one write) leaves here as one line, its other control bytes
/// escaped. ESC passes, as the level's colours use it.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write_all(&escape_log_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `buf` with every control byte but ESC and a final newline written as `\n`, `\r`, `\t` or
/// `\xNN`.
fn escape_log_line(buf: &[u8]) -> Vec<u8> {
    let (body, newline) = match buf.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (buf, false),
    };
    let mut out = Vec::with_capacity(buf.len() + 16);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x1b => out.push(b),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    if newline {
        out.push(b'\n');
    }
    out
}

fn main() {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Filter rules keep their command-line order across flags (first match wins).
    if let (Command::Xfer(args), Some(("xfer", sub))) = (&mut cli.command, matches.subcommand()) {
        args.filters.order(sub);
    }
    let ansi = colours(
        &cli.color,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        std::env::var_os("TERM").is_some_and(|t| t == "dumb"),
    );
    init_logging(cli.verbose, ansi);
    let code = match cli.command {
        Command::Xfer(args) => xfer::run(args, cli.verbose),
        Command::Daemon(args) => daemon::run(args),
        Command::Topo(args) => topo::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::Ls(args) => ops::ls(args),
        Command::Du(args) => ops::du(args),
        Command::Rm(args) => ops::rm(args),
        Command::Mkdir(args) => ops::mkdir(args),
        Command::Completions(args) => manual::completions(&args),
        Command::Man(args) => manual::man(&args),
    };
    std::process::exit(code.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_for_a_terminal_unless_asked() {
        assert!(colours("auto", true, false, false));
        assert!(!colours("auto", false, false, false), "a pipe or a file gets no ANSI codes");
        assert!(!colours("auto", true, true, false), "NO_COLOR");
        assert!(!colours("auto", true, false, true), "TERM=dumb");
        assert!(colours("always", false, true, true));
        assert!(!colours("never", true, false, false));
    }

    #[test]
    fn log_lines_cannot_be_split_by_a_logged_name() {
        let line = b"\x1b[33m WARN\x1b[0m cannot stat a\nFAKE LINE\r\x07: gone\n";
        assert_eq!(
            escape_log_line(line),
            b"\x1b[33m WARN\x1b[0m cannot stat a\\nFAKE LINE\\r\\x07: gone\n".to_vec()
        );
        assert_eq!(escape_log_line(b"no newline"), b"no newline".to_vec());
    }
}
