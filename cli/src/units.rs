//! Parsing and printing sizes and rates.

/// Parses `4M`, `256K`, `1G`, `4096`, `4MiB` (binary multiples).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a size like 4M or 65536"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {text:?} (use K, M or G)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a bandwidth limit in bytes per second: `200M` (200 MB/s = 200,000,000 bytes/s), `1.5G`,
/// `500K`; decimal like network rates and `--json`'s MB/s. Binary with `KiB`/`MiB`/`GiB`/`TiB`
/// (`Ki`, `Mi`, ...); `B`/`KB`/`MB`/... are decimal too; an optional `/s` may follow. A unit is
/// required: rsync reads a bare `--bwlimit 1000` as KiB/s, and guessing could be off by 1000x.
/// 0 is refused (no limit is the default).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        "" if !num.is_empty() && num.chars().all(|c| c == '0') => {
            return Err(format!(
                "{text:?} is no rate: a limit must be above 0 bytes/s (leave --bwlimit out for none)"
            ));
        }
        "" => {
            return Err(format!(
                "{text:?} has no unit: write e.g. 200M (200 MB/s), 500K or 1GiB (rsync would read a bare number as KiB/s)"
            ));
        }
        _ => {
            return Err(format!("unknown rate unit in {text:?} (use K, M, G, T or KiB, MiB, GiB)"));
        }
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits_ok = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(frac) || frac.len() > 9 {
        return Err(format!("{text:?} is not a rate like 200M or 1.5G"));
    }
    let too_large = || format!("{text:?} is too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let frac_scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| too_large())? };
    let bytes = (whole * frac_scale + frac).checked_mul(mult).ok_or_else(too_large)? / frac_scale;
    let bytes = u64::try_from(bytes).map_err(|_| too_large())?;
    if bytes == 0 {
        return Err(format!(
            "{text:?} is no rate: a limit must be above 0 bytes/s (leave --bwlimit out for none)"
        ));
    }
    Ok(bytes)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4M").unwrap(), 4 << 20);
        assert_eq!(parse_bytes("256KiB").unwrap(), 256 << 10);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("4X").is_err());
        assert!(parse_bytes("").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("200M").unwrap(), 200_000_000);
        assert_eq!(parse_rate("200MB/s").unwrap(), 200_000_000);
        assert_eq!(parse_rate("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("500k").unwrap(), 500_000);
        assert_eq!(parse_rate("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_rate("2Gi").unwrap(), 2 << 30);
        assert_eq!(parse_rate("4096B").unwrap(), 4096);
        assert_eq!(parse_rate("0.001K").unwrap(), 1);
        for bad in [
            "0",
            "0M",
            "0.0001K",
            "",
            "M",
            "1000",
            "12X",
            "1.2.3M",
            "-5M",
            ".5M",
            "1e3M",
            "99999999999T",
            "1.1234567891M",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
