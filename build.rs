//! Release builds for Linux: the functions a proxy session runs are linked next to each other.
//!
//! The kernel maps a program's code 64 KiB around every page it touches, and a proxy touches
//! ~1 MiB of functions spread over ~10 MiB of code: without an order, a proxy maps ~5.5 MiB of
//! the binary; with `bench/proxy.order` (written by `bash bench/order.sh`) ~1.3 MiB, and starts
//! with fewer page faults. The order goes to the linker only when it takes
//! `--symbol-ordering-file` (lld, which rustup's Rust uses for x86_64 Linux since 1.90): a probe
//! link with the build's own compiler, target, linker and flags decides, so another linker
//! builds exactly as before. Names the file lists that the build lacks are ignored.
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=bench/proxy.order");
    if env::var("PROFILE").as_deref() != Ok("release")
        || env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    let (Some(manifest_dir), Some(out_dir)) =
        (env::var_os("CARGO_MANIFEST_DIR"), env::var_os("OUT_DIR"))
    else {
        return;
    };
    let order = Path::new(&manifest_dir).join("bench").join("proxy.order");
    // `-Wl,` splits its argument at commas.
    if !order.is_file() || order.to_string_lossy().contains(',') {
        return;
    }
    let args = [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ];
    if linker_takes(&args, &PathBuf::from(out_dir)) {
        for arg in args {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
}

/// Links an empty program as the build links its binaries, with `args` added.
fn linker_takes(args: &[String], out_dir: &Path) -> bool {
    let source = out_dir.join("order_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = Command::new(rustc);
    probe
        .arg("--crate-type=bin")
        .arg("--edition=2021")
        .arg("-o")
        .arg(out_dir.join("order_probe"))
        .arg(&source);
    if let Ok(target) = env::var("TARGET") {
        probe.args(["--target", &target]);
    }
    if let Ok(linker) = env::var("RUSTC_LINKER") {
        probe.arg(format!("-Clinker={linker}"));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    for arg in args {
        probe.arg(format!("-Clink-arg={arg}"));
    }
    probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
