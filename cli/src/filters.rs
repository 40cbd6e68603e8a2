//! The filter flags of `blit xfer` (rsync's): `--include`, `--exclude`, `--include-from`,
//! `--exclude-from`, `--filter`, `--files-from`, `--min-size`, `--max-size`,
//! `--delete-excluded`, turned into the session's [`FilterParams`].
//!
//! Rules keep their command-line order across all five rule flags (first match wins), which
//! clap's derive cannot express: [`FilterArgs::order`] reads the positions from the matches.
//! Every error here is a usage error (exit 2), found before anything is transferred.

use std::io::Read;
use std::path::Path;

use blitx_core::RelPath;
use blitx_core::filter::{FilterParams, Rule, RuleKind};

use crate::exit::UsageError;

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

#[derive(Debug, clap::Args, Default)]
pub struct FilterArgs {
    /// Leave out paths matching PATTERN (rsync syntax, repeatable; the first matching
    /// --include/--exclude rule decides). Without '/', matches names at any depth.
    #[arg(long = "exclude", value_name = "PATTERN", allow_hyphen_values = true)]
    pub excludes: Vec<String>,
    /// Transfer paths matching PATTERN even if a later --exclude matches them.
    #[arg(long = "include", value_name = "PATTERN", allow_hyphen_values = true)]
    pub includes: Vec<String>,
    /// Read exclude patterns from FILE ('-': stdin), one a line; blank lines and lines
    /// starting with ';' or '#' are ignored; '+ '/'- ' prefixes choose the rule's kind.
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<String>,
    /// Read include patterns from FILE (as --exclude-from).
    #[arg(long, value_name = "FILE")]
    pub include_from: Vec<String>,
    /// A filter rule: '+ PATTERN' (include) or '- PATTERN' (exclude).
    #[arg(long = "filter", short = 'f', value_name = "RULE", allow_hyphen_values = true)]
    pub filter_rules: Vec<String>,
    /// Transfer only the paths listed in FILE ('-': stdin), relative to SOURCE, one a line
    /// (a directory with everything below it); the directories leading to them are made.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<String>,
    /// Leave out files smaller than SIZE (rsync suffixes: K, M, G = 1024^n; KB, MB = 1000^n).
    #[arg(long, value_name = "SIZE", value_parser = parse_rsync_size)]
    pub min_size: Option<u64>,
    /// Leave out files larger than SIZE.
    #[arg(long, value_name = "SIZE", value_parser = parse_rsync_size)]
    pub max_size: Option<u64>,
    /// With --mirror, also delete target paths that the rules exclude (they are protected
    /// otherwise).
    #[arg(long)]
    pub delete_excluded: bool,
    /// (position on the command line, flag id, value), filled by [`FilterArgs::order`].
    #[arg(skip)]
    pub order: Vec<(usize, &'static str, String)>,
}

/// The ids of the rule flags, as clap names them.
const RULE_FLAGS: [&str; 5] =
    ["excludes", "includes", "exclude_from", "include_from", "filter_rules"];

impl FilterArgs {
    /// Records the command-line order of the rule flags from `matches` (the `xfer` matches).
    pub fn order(&mut self, matches: &clap::ArgMatches) {
        let mut order = Vec::new();
        for id in RULE_FLAGS {
            let (Some(idx), Some(vals)) = (matches.indices_of(id), matches.get_many::<String>(id))
            else {
                continue;
            };
            order.extend(idx.zip(vals).map(|(i, v)| (i, id, v.clone())));
        }
        order.sort_by_key(|(i, _, _)| *i);
        self.order = order;
    }

    /// The session's filters. `source`: the local SOURCE directory (local copies and pushes),
    /// against which `--files-from` paths are checked.
    pub fn params(&self, source: Option<&Path>) -> anyhow::Result<FilterParams> {
        let mut stdin_used = false;
        let mut rules = Vec::new();
        // Without a recorded order (a caller that did not call `order`), flags in a fixed one.
        let order = if self.order.is_empty() {
            let mut o = Vec::new();
            for (id, vals) in [
                ("includes", &self.includes),
                ("excludes", &self.excludes),
                ("include_from", &self.include_from),
                ("exclude_from", &self.exclude_from),
                ("filter_rules", &self.filter_rules),
            ] {
                o.extend(vals.iter().map(|v| (0, id, v.clone())));
            }
            o
        } else {
            self.order.clone()
        };
        for (_, id, value) in &order {
            match *id {
                "excludes" => rules.push(pattern_rule(RuleKind::Exclude, value)),
                "includes" => rules.push(pattern_rule(RuleKind::Include, value)),
                "filter_rules" => rules.push(filter_rule(value)?),
                from => {
                    let kind =
                        if from == "include_from" { RuleKind::Include } else { RuleKind::Exclude };
                    let text = read_list(value, &mut stdin_used, from)?;
                    for line in pattern_lines(&text) {
                        rules.push(pattern_rule(kind, line));
                    }
                }
            }
        }
        let files_from = match &self.files_from {
            None => None,
            Some(file) => {
                let text = read_list(file, &mut stdin_used, "files_from")?;
                Some(files_from_paths(&text, source)?)
            }
        };
        let params = FilterParams {
            rules,
            min_size_bytes: self.min_size,
            max_size_bytes: self.max_size,
            delete_excluded: self.delete_excluded,
            files_from,
        };
        blitx_planner::Filters::new(&params).map_err(|e| usage(e.to_string()))?;
        if let (Some(paths), Some(source)) = (&params.files_from, source) {
            let root = std::fs::File::open(source)
                .map_err(|e| usage(format!("cannot open SOURCE {}: {e}", source.display())))?;
            blitx_storage::source::check_files_from(std::os::fd::AsFd::as_fd(&root), paths)
                .map_err(|e| usage(crate::xfer::error_chain(&e.into())))?;
        }
        Ok(params)
    }
}

/// A pattern flag's value or a list line: rsync lets `+ `/`- ` override the flag's kind.
fn pattern_rule(kind: RuleKind, text: &str) -> Rule {
    if let Some(p) = text.strip_prefix("+ ") {
        Rule::include(p)
    } else if let Some(p) = text.strip_prefix("- ") {
        Rule::exclude(p)
    } else {
        Rule { kind, pattern: text.to_owned() }
    }
}

/// A `--filter` rule: `+ PATTERN`, `- PATTERN`, `include PATTERN` or `exclude PATTERN`
/// (rsync's other rule kinds — merge files, protect, risk, modifiers — are refused).
fn filter_rule(text: &str) -> anyhow::Result<Rule> {
    let (head, pattern) = text
        .split_once([' ', '_'])
        .ok_or_else(|| usage(format!("filter rule {text:?} is not '+ PATTERN' or '- PATTERN'")))?;
    match head {
        "+" | "include" => Ok(Rule::include(pattern)),
        "-" | "exclude" => Ok(Rule::exclude(pattern)),
        _ => Err(usage(format!(
            "filter rule {text:?}: unknown or unsupported rule kind {head:?} (blit takes '+', '-', \
             'include', 'exclude')"
        ))),
    }
}

/// The lines of a pattern list that carry a pattern.
fn pattern_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
}

/// Longest list file read (the session's bounds are far below it).
const LIST_BYTES_MAX: u64 = 64 << 20;

fn read_list(file: &str, stdin_used: &mut bool, flag: &str) -> anyhow::Result<String> {
    let flag = format!("--{}", flag.replace('_', "-"));
    let mut bytes = Vec::new();
    if file == "-" {
        if std::mem::replace(stdin_used, true) {
            return Err(usage(format!("{flag} -: standard input is already read by another list")));
        }
        std::io::stdin()
            .take(LIST_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| usage(format!("{flag} -: cannot read standard input: {e}")))?;
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| usage(format!("{flag} {file}: cannot open: {e}")))?;
        f.take(LIST_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| usage(format!("{flag} {file}: cannot read: {e}")))?;
    }
    if bytes.len() as u64 > LIST_BYTES_MAX {
        return Err(usage(format!("{flag} {file}: longer than {LIST_BYTES_MAX} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| usage(format!("{flag} {file}: not UTF-8 text")))
}

/// `--files-from` lines as paths relative to SOURCE: `.` components and a trailing `/` are
/// dropped; `..`, and an absolute path not beneath `source`, are errors.
fn files_from_paths(text: &str, source: Option<&Path>) -> anyhow::Result<Vec<RelPath>> {
    let source_abs = source.and_then(|s| s.canonicalize().ok());
    let mut out = Vec::new();
    for line in pattern_lines(text) {
        let mut rel = line;
        let stripped;
        if line.starts_with('/') {
            let beneath = source_abs.as_ref().and_then(|s| {
                Path::new(line).strip_prefix(s).ok().map(|r| r.to_string_lossy().into_owned())
            });
            match beneath {
                Some(r) => {
                    stripped = r;
                    rel = &stripped;
                }
                None => {
                    return Err(usage(format!(
                        "--files-from path {line:?} is absolute and not beneath SOURCE"
                    )));
                }
            }
        }
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        if parts.contains(&"..") {
            return Err(usage(format!("--files-from path {line:?} leaves SOURCE ('..')")));
        }
        if parts.is_empty() {
            return Err(usage(format!("--files-from path {line:?} names SOURCE itself")));
        }
        let path = RelPath::parse_str(&parts.join("/"))
            .map_err(|e| usage(format!("--files-from path {line:?}: {e}")))?;
        out.push(path);
    }
    Ok(out)
}

/// rsync's sizes: a number (fractions allowed) with an optional suffix B, K, M, G, T, P
/// (powers of 1024; `KB`, `MB`, … powers of 1000; `KiB`, … 1024), then an optional `+1`/`-1`.
pub fn parse_rsync_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size like 100K, 1.5M, 2GB or 4096");
    let t = text.trim();
    let (t, adjust) = if let Some(r) = t.strip_suffix("+1") {
        (r, 1i64)
    } else if let Some(r) = t.strip_suffix("-1") {
        (r, -1)
    } else {
        (t, 0)
    };
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let unit = unit.to_ascii_lowercase();
    let (letter, rest) = unit.split_at(unit.len().min(1));
    let power = match letter {
        "" | "b" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return Err(bad()),
    };
    let base: u64 = match rest {
        "" => 1024,
        "ib" if power > 0 => 1024,
        "b" if power > 0 => 1000,
        _ => return Err(bad()),
    };
    let mult = base.checked_pow(power).ok_or_else(bad)?;
    // Exact in integers: the whole part times the multiplier plus the fraction's share.
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let mut bytes = whole.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large"))?;
    if !frac.is_empty() {
        let digits = frac.len().min(12) as u32;
        let f: u128 = frac[..digits as usize].parse().map_err(|_| bad())?;
        let share = f * u128::from(mult) / 10u128.pow(digits);
        bytes = bytes.checked_add(share as u64).ok_or_else(|| format!("{text:?} is too large"))?;
    }
    bytes.checked_add_signed(adjust).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_sizes() {
        for (text, want) in [
            ("4096", 4096),
            ("10b", 10),
            ("1k", 1024),
            ("1K", 1024),
            ("1KiB", 1024),
            ("1kb", 1000),
            ("1.5M", 1536 << 10),
            ("2G", 2 << 30),
            ("1MB", 1_000_000),
            ("1k+1", 1025),
            ("1k-1", 1023),
            (".5k", 512),
        ] {
            assert_eq!(parse_rsync_size(text), Ok(want), "{text}");
        }
        for bad in ["", "k", "1x", "1.2.3", "1kib2", "-1", "99999999P"] {
            assert!(parse_rsync_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filter_rules_and_list_lines() {
        assert_eq!(filter_rule("+ *.c").unwrap(), Rule::include("*.c"));
        assert_eq!(filter_rule("- build/").unwrap(), Rule::exclude("build/"));
        assert_eq!(filter_rule("exclude x").unwrap(), Rule::exclude("x"));
        assert!(filter_rule("P secret").is_err());
        assert!(filter_rule(": .rsync-filter").is_err());
        assert!(filter_rule("nospace").is_err());
        let text = "# comment\n; also\n\n*.o\r\n+ keep.o\n- x\n";
        let lines: Vec<&str> = pattern_lines(text).collect();
        assert_eq!(lines, ["*.o", "+ keep.o", "- x"]);
        assert_eq!(pattern_rule(RuleKind::Exclude, "+ keep.o"), Rule::include("keep.o"));
    }

    #[test]
    fn files_from_paths_stay_beneath_source() {
        let p = files_from_paths("a/b\n./c/\n# x\nd//e\n", None).unwrap();
        let got: Vec<String> = p.iter().map(|p| p.display()).collect();
        assert_eq!(got, ["a/b", "c", "d/e"]);
        assert!(files_from_paths("../x\n", None).is_err());
        assert!(files_from_paths("a/../../x\n", None).is_err());
        assert!(files_from_paths("/etc/passwd\n", None).is_err());
        assert!(files_from_paths(".\n", None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let abs = format!("{}/x/y\n", dir.path().canonicalize().unwrap().display());
        let got = files_from_paths(&abs, Some(dir.path())).unwrap();
        assert_eq!(got[0].display(), "x/y");
    }
}
