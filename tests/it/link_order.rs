//! `bench/proxy.order`, the functions `build.rs` asks the linker to lay out together in release
//! builds on Linux (written by `bash bench/order.sh`): one symbol per line as the linker reads
//! it, each once, the proxy's own functions among them. An empty or garbled list would quietly
//! give every proxy ~4 MiB more of mapped code.

use std::collections::HashSet;
use std::path::Path;

#[test]
fn the_proxy_link_order_lists_each_symbol_once() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/proxy.order");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; `bash bench/order.sh` writes it", path.display()));
    let mut symbols = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), index + 1);
        assert!(
            !line.is_empty() && !line.contains(char::is_whitespace),
            "{at}: not one symbol name: {line:?}"
        );
        assert!(symbols.insert(line), "{at}: {line} is listed twice");
    }
    assert!(
        symbols.len() > 300,
        "{}: {} symbols; a proxy session runs about a thousand functions",
        path.display(),
        symbols.len()
    );
    assert!(
        symbols
            .iter()
            .any(|s| s.contains("5mcpsm") && s.contains("5proxy")),
        "{}: none of the proxy's own functions (mcpsm::cmd::proxy) is listed",
        path.display()
    );
}
