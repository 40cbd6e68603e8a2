//! Makes `-ludev` linkable without installing `libudev-dev`.
//!
//! Why this exists: `hwlocality-sys` probes hwloc with `pkg-config --static`, so the final link
//! gets hwloc's private dependencies, `-lm -ludev -lpthread`. Debian ships the linker name
//! `libudev.so` only in `libudev-dev`, and installing that package on bookworm drags a systemd/udev
//! upgrade along (see /work/shared/CRATE-FACTS.md, Q3). The runtime library `libudev.so.1` is always
//! present (`libhwloc15` depends on `libudev1`), so when no `libudev.so` is found we put a
//! symlink `libudev.so -> .../libudev.so.1` in `OUT_DIR` and add that directory to the link
//! search path. Cargo passes a build script's search paths on to every crate that depends on this
//! one, so `blit`, the tests and the benches all link without a `.cargo/config.toml` or RUSTFLAGS.
//! The symlink's target carries the SONAME `libudev.so.1`, so the binary depends on exactly what
//! `libudev1` provides (and, with `--as-needed`, on nothing at all if hwloc needs no udev symbol).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("{arch}-linux-gnu");
    let dirs: Vec<PathBuf> = [
        format!("/usr/lib/{multiarch}"),
        format!("/lib/{multiarch}"),
        "/usr/lib64".to_owned(),
        "/lib64".to_owned(),
        "/usr/lib".to_owned(),
        "/lib".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();

    if dirs.iter().any(|d| d.join("libudev.so").exists()) {
        // libudev-dev (or an equivalent) is installed: the linker finds it by itself.
        return;
    }
    let Some(runtime) = dirs.iter().map(|d| d.join("libudev.so.1")).find(|p| p.exists()) else {
        println!(
            "cargo::warning=neither libudev.so nor libudev.so.1 found; linking hwloc may fail \
             with `unable to find library -ludev` (install libudev1)"
        );
        return;
    };
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo::warning=OUT_DIR not set; cannot provide the libudev.so link shim");
        return;
    };
    let shim_dir = out_dir.join("udev-link");
    if let Err(e) = make_shim(&shim_dir, &runtime) {
        println!(
            "cargo::warning=cannot create {}/libudev.so -> {}: {e}; linking may fail with \
             `unable to find library -ludev`",
            shim_dir.display(),
            runtime.display()
        );
        return;
    }
    println!("cargo::rustc-link-search=native={}", shim_dir.display());
}

fn make_shim(shim_dir: &Path, runtime: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(shim_dir)?;
    let link = shim_dir.join("libudev.so");
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(runtime, &link)
}
