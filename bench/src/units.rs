//! Formatting of sizes, rates and times for reports (the CLI parses sizes; this only prints).

/// Bytes per second as Gb/s (10^9 bits per second), the unit network links are sold in.
pub fn gbps(bytes_per_sec: f64) -> f64 {
    bytes_per_sec * 8.0 / 1e9
}

/// A chunk or file size as the CLI accepts it: `256K`, `1M`, `16M`, `3G`, or plain bytes.
pub fn size_label(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (mult, unit) in UNITS {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    bytes.to_string()
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn parts(unix_s: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let (y, m, d) = civil_from_days(days);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// `2026-11-25T10:15:00Z`.
pub fn utc_rfc3339(unix_s: u64) -> String {
    let (y, mo, d, h, mi, s) = parts(unix_s);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261125T101500Z`: sorts by time and is safe in a file name.
pub fn utc_compact(unix_s: u64) -> String {
    let (y, mo, d, h, mi, s) = parts(unix_s);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_rates() {
        assert_eq!(size_label(256 << 10), "256K");
        assert_eq!(size_label(16 << 20), "16M");
        assert_eq!(size_label(1 << 30), "1G");
        assert_eq!(size_label(1000), "1000");
        assert_eq!(size_label(1536), "1536");
        assert!((gbps(1.25e9) - 10.0).abs() < 1e-12);
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_rfc3339(1_764_065_700), "2025-11-25T10:15:00Z");
        assert_eq!(utc_compact(1_764_065_700), "20251125T101500Z");
    }
}
