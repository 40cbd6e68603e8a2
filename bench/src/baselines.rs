//! Parsing what the baseline tools print, and finding out whether they can run here.
//!
//! Owns: locating a tool on PATH, listing verbs devices, and turning `iperf3 -J` JSON and
//! `ib_write_bw` tables into numbers. Pure functions plus two filesystem look-ups; running the
//! tools is the harness's job.

use std::path::{Path, PathBuf};

/// The first `name` on PATH that is an executable file.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Names under /sys/class/infiniband (verbs devices: mlx5_0, rxe0, …), sorted.
pub fn verbs_devices() -> Result<Vec<String>, String> {
    let dir = Path::new("/sys/class/infiniband");
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("no verbs device ({} missing: {e})", dir.display()))?;
    let mut v: Vec<String> =
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    if v.is_empty() {
        return Err(format!("no verbs device ({} is empty)", dir.display()));
    }
    Ok(v)
}

/// What one iperf3 test measured (receiver side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf3Result {
    pub bytes: u64,
    pub seconds: f64,
    pub bits_per_second: f64,
}

/// Parses `iperf3 -c … -J` output. An `"error"` member is returned as the error.
pub fn parse_iperf3_json(text: &str) -> Result<Iperf3Result, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("iperf3 printed no JSON ({e})"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let sum = v
        .pointer("/end/sum_received")
        .ok_or_else(|| "iperf3 JSON has no end.sum_received".to_string())?;
    let num = |k: &str| sum.get(k).and_then(|x| x.as_f64());
    match (num("bytes"), num("seconds"), num("bits_per_second")) {
        (Some(bytes), Some(seconds), Some(bps)) if seconds > 0.0 => {
            Ok(Iperf3Result { bytes: bytes as u64, seconds, bits_per_second: bps })
        }
        _ => Err("iperf3 JSON end.sum_received lacks bytes/seconds/bits_per_second".to_string()),
    }
}

/// What one ib_write_bw test measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IbWriteBwResult {
    pub message_bytes: u64,
    pub bytes_per_second: f64,
}

/// Parses ib_write_bw's result table: the first numeric row after the header that names
/// `BW average[Gb/sec]` (with `--report_gbits`) or `BW average[MB/sec]` (MiB/s, perftest's
/// default).
pub fn parse_ib_write_bw(text: &str) -> Result<IbWriteBwResult, String> {
    let mut unit_bytes: Option<f64> = None;
    for line in text.lines() {
        if line.contains("BW average") {
            unit_bytes = Some(if line.contains("[Gb/sec]") {
                1e9 / 8.0
            } else if line.contains("[MB/sec]") {
                1_048_576.0
            } else {
                return Err(format!("unknown ib_write_bw unit in {line:?}"));
            });
            continue;
        }
        let Some(unit) = unit_bytes else { continue };
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if let (Ok(size), Ok(avg)) = (f[0].parse::<u64>(), f[3].parse::<f64>()) {
            return Ok(IbWriteBwResult { message_bytes: size, bytes_per_second: avg * unit });
        }
    }
    Err("no result row in ib_write_bw output".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_receiver_sum_is_used() {
        let j = r#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"bytes":5000000000,"seconds":1.0,"bits_per_second":4.0e10},
            "sum_received":{"bytes":4990000000,"seconds":1.0002,"bits_per_second":3.99e10},
            "cpu_utilization_percent":{"host_total":55.0}}}"#;
        let r = parse_iperf3_json(j).unwrap();
        assert_eq!(r.bytes, 4_990_000_000);
        assert_eq!(r.bits_per_second, 3.99e10);
    }

    #[test]
    fn iperf3_errors_are_reported() {
        let e = parse_iperf3_json(r#"{"start":{},"error":"the server is busy running a test"}"#)
            .unwrap_err();
        assert!(e.contains("busy"), "{e}");
        assert!(parse_iperf3_json("garbage").is_err());
        assert!(parse_iperf3_json(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn ib_write_bw_table() {
        let out = "\
---------------------------------------------------------------------------------------
                    RDMA_Write BW Test
 Dual-port       : OFF          Device         : mlx5_0
---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]
 65536      1759000          0.00               92.21              0.175873
---------------------------------------------------------------------------------------
";
        let r = parse_ib_write_bw(out).unwrap();
        assert_eq!(r.message_bytes, 65536);
        assert!((r.bytes_per_second - 92.21e9 / 8.0).abs() < 1.0);
        let mib = out.replace("[Gb/sec]", "[MB/sec]").replace("92.21", "1000.0");
        assert_eq!(parse_ib_write_bw(&mib).unwrap().bytes_per_second, 1000.0 * 1_048_576.0);
        assert!(parse_ib_write_bw("Couldn't connect to 10.0.0.1:18515").is_err());
    }

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("no-such-tool-blit-bench").is_none());
        assert!(which("/bin/sh").is_some());
    }
}
