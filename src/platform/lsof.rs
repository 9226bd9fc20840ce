//! Reading `lsof -F` output: how macOS tells who listens on a port (`lsof` ships with every
//! macOS; there is no /proc). Pure parsing, so it is tested on every OS.

/// The arguments that list the listeners on TCP `port`, one field per line (`p` = pid).
pub fn listener_args(port: u16) -> Vec<String> {
    vec![
        "-nP".into(),
        format!("-iTCP:{port}"),
        "-sTCP:LISTEN".into(),
        "-Fp".into(),
    ]
}

/// The first process in `lsof -F` output (`p1234` lines).
pub fn first_pid(output: &str) -> Option<u32> {
    output
        .lines()
        .find_map(|line| line.strip_prefix('p')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_listener_is_read_from_lsof_fields() {
        let output = "p4242\nf23\np4343\nf5\n";
        assert_eq!(first_pid(output), Some(4242));
        assert_eq!(first_pid(""), None);
        assert_eq!(first_pid("f12\n"), None);
        assert!(listener_args(3100).contains(&"-iTCP:3100".to_owned()));
    }
}
