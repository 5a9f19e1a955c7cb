//! CI size or soak size: the fault tests run small in CI and at the full size when
//! `BACKPROC_SOAK=1` (set by scripts/soak), and print one machine-readable `FIGURE` line each.

/// Whether the soak sizes were asked for (`BACKPROC_SOAK` set to anything but "" or "0").
pub fn soak() -> bool {
    std::env::var("BACKPROC_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `ci` normally, `soak` under `BACKPROC_SOAK=1`.
pub fn size<T>(ci: T, soak_size: T) -> T {
    if soak() { soak_size } else { ci }
}

/// Prints `FIGURE <name> k=v ...` on stdout (scripts/soak collects these lines into its table).
pub fn figure(name: &str, fields: &[(&str, String)]) {
    let mut line = format!("FIGURE {name}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    // stdout and not stderr: `cargo test -- --nocapture` passes both through, and scripts/soak
    // greps the stream for this prefix.
    println!("{line}");
}
