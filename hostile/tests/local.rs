//! A local copy of a file whose size no transfer can move (TESTS.md row 4).

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blitx_hostile::process::{s, xfer};

fn libc_sigabrt() -> i32 {
    rustix::process::Signal::ABORT.as_raw()
}

/// A scratch directory where `truncate -s 4E` works (tmpfs does, ext4 does not).
fn huge_sparse_source() -> Result<(tempfile::TempDir, std::path::PathBuf), String> {
    let mut why = Vec::new();
    for base in [Path::new("/dev/shm"), &std::env::temp_dir()] {
        if !base.is_dir() {
            continue;
        }
        let Ok(t) = tempfile::Builder::new().prefix("blit-hostile-4e-").tempdir_in(base) else {
            continue;
        };
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let f = src.join("huge");
        let out = Command::new("truncate").args(["-s", "4E"]).arg(&f).output();
        match out {
            Ok(o) if o.status.success() => return Ok((t, src)),
            Ok(o) => {
                why.push(format!("{}: {}", base.display(), String::from_utf8_lossy(&o.stderr)))
            }
            Err(e) => why.push(format!("truncate: {e}")),
        }
    }
    Err(why.join("; "))
}

#[test]
fn local_copy_of_4eib_sparse_file_does_not_abort() {
    let (t, src) = match huge_sparse_source() {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIPPED: cannot create a 4 EiB sparse file: {why}");
            return;
        }
    };
    std::fs::write(src.join("small"), b"small").unwrap();
    let dst = t.path().join("dst");
    let r = xfer(&[s(&src), s(&dst)], Duration::from_secs(20));
    eprintln!("copying a 4 EiB sparse file: {}", r.describe());
    // Whatever landed must not be left behind in memory-backed storage.
    let _ = std::fs::remove_file(dst.join("huge"));
    assert!(
        !r.timed_out,
        "copying a 4 EiB sparse file did not finish within 20 s: {}",
        r.describe()
    );
    let aborted =
        r.code() == Some(134) || r.status.and_then(|st| st.signal()) == Some(libc_sigabrt());
    assert!(!aborted, "blit aborted: {}", r.describe());
    assert!(
        matches!(r.code(), Some(0 | 23)),
        "expected a sparse copy (exit 0) or a per-file error (exit 23): {}",
        r.describe()
    );
    if r.code() == Some(23) {
        assert!(
            r.stderr.contains("huge"),
            "the per-file error does not name the file: {}",
            r.describe()
        );
    }
    assert_eq!(std::fs::read(dst.join("small")).unwrap(), b"small", "the rest was not copied");
}
