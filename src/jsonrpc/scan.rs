//! One pass over a message for its envelope: `id`, `method` and whether it has an `error`,
//! validating the whole JSON text on the way.
//!
//! serde reads the same fields ([`super::Envelope`]) but skips a string byte group by byte
//! group; a `tools/call` carrying a megabyte of text spends most of its time there. Here the
//! end of a string is found with `memchr` (SIMD) and its bytes are checked for control
//! characters eight at a time, in a loop the compiler vectorizes.
//!
//! The scanner only ever vouches for what serde would accept, with the same fields: anything
//! it does not handle itself (an escaped key or method, a duplicated envelope key, deep
//! nesting) or finds wrong makes it answer `None`, and the caller asks serde, which accepts it
//! or says precisely what is wrong.

use memchr::memchr2;

/// What the envelope holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Fields<'a> {
    /// The JSON text of `id` (`null` included), as written.
    pub id: Option<&'a str>,
    /// `method` when it is a string (no escapes in it).
    pub method: Option<&'a str>,
    /// An `error` member that is not `null`.
    pub error: bool,
}

/// Nesting this scanner follows; deeper documents go to serde (whose limit is 128).
const MAX_DEPTH: usize = 100;

/// The envelope of `raw`, a JSON object, when `raw` is valid JSON this scanner vouches for.
pub fn envelope(raw: &[u8]) -> Option<Fields<'_>> {
    let mut scanner = Scanner { bytes: raw, at: 0 };
    scanner.space();
    let fields = scanner.envelope()?;
    scanner.space();
    (scanner.at == raw.len()).then_some(())?;
    // serde checks UTF-8 where it reads text: the members' names and the values it borrows.
    let text = |range: Option<(usize, usize)>| match range {
        Some((start, end)) => std::str::from_utf8(&raw[start..end]).map(Some).ok(),
        None => Some(None),
    };
    text(fields.error)?;
    Some(Fields {
        id: text(fields.id)?,
        method: text(fields.method)?,
        error: fields.error.is_some_and(|(start, _)| raw[start] != b'n'),
    })
}

/// Byte ranges of the envelope's members' values.
#[derive(Default)]
struct Ranges {
    id: Option<(usize, usize)>,
    method: Option<(usize, usize)>,
    error: Option<(usize, usize)>,
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// The top-level object, noting the envelope's members.
    fn envelope(&mut self) -> Option<Ranges> {
        let mut ranges = Ranges::default();
        self.eat(b'{')?;
        self.space();
        if self.eat(b'}').is_some() {
            return Some(ranges);
        }
        loop {
            let (key_start, key_end, escaped) = self.string()?;
            self.space();
            self.eat(b':')?;
            self.space();
            if escaped {
                // An escape may spell a member's name: serde decodes it.
                return None;
            }
            let key = &self.bytes[key_start..key_end];
            std::str::from_utf8(key).ok()?;
            let start = self.at;
            match key {
                b"id" => {
                    ranges.id.is_none().then_some(())?;
                    self.value(1)?;
                    ranges.id = Some((start, self.at));
                }
                b"method" => {
                    // Only a plain string: a `null` one (no method, but a second `method`
                    // still refused) or anything else is serde's to judge.
                    ranges.method.is_none().then_some(())?;
                    let (start, end, escaped) = self.string()?;
                    (!escaped).then_some(())?;
                    ranges.method = Some((start, end));
                }
                b"error" => {
                    ranges.error.is_none().then_some(())?;
                    self.value(1)?;
                    ranges.error = Some((start, self.at));
                }
                _ => self.value(1)?,
            }
            self.space();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.space();
                }
                b'}' => {
                    self.at += 1;
                    return Some(ranges);
                }
                _ => return None,
            }
        }
    }

    /// Any JSON value, `depth` levels down.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object (`keyed`) or an array, from its opening byte to `close`.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        (depth < MAX_DEPTH).then_some(())?;
        self.at += 1;
        self.space();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            if keyed {
                self.string()?;
                self.space();
                self.eat(b':')?;
                self.space();
            }
            self.value(depth + 1)?;
            self.space();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.space();
                }
                byte if byte == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits()?;
        }
        // `01` or `1x`: not a number serde reads.
        match self.peek() {
            Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.') => None,
            _ => Some(()),
        }
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        (self.at > start).then_some(())
    }

    /// A string from its opening quote: the range of its content and whether it has escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = &self.bytes[self.at..];
            let found = memchr2(b'"', b'\\', rest)?;
            if has_control(&rest[..found]) {
                return None;
            }
            self.at += found;
            if self.bytes[self.at] == b'"' {
                self.at += 1;
                return Some((start, self.at - 1, escaped));
            }
            escaped = true;
            self.escape()?;
        }
    }

    /// An escape, from its backslash.
    fn escape(&mut self) -> Option<()> {
        match self.bytes.get(self.at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
            b'u' => {
                let hex = self.bytes.get(self.at + 2..self.at + 6)?;
                hex.iter().all(u8::is_ascii_hexdigit).then_some(())?;
                self.at += 6;
            }
            _ => return None,
        }
        Some(())
    }
}

/// Whether `bytes` holds a control character (U+0000 to U+001F), which a JSON string must
/// escape. Eight bytes at a time, without an early exit, which the compiler vectorizes: a
/// byte below 0x20 borrows in `word - 0x20202020…` and had its high bit clear.
fn has_control(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    let mut words = bytes.chunks_exact(8);
    let mut found = 0;
    for word in &mut words {
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        let word = u64::from_le_bytes(eight);
        found |= word.wrapping_sub(ONES * 0x20) & !word;
    }
    found & (ONES << 7) != 0 || words.remainder().iter().any(|&b| b < 0x20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde reads: `Err` when it refuses the text.
    fn serde_fields(text: &str) -> Result<(Option<String>, Option<String>, bool), String> {
        let envelope: super::super::Envelope<'_> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok((
            envelope.id.map(|id| id.get().to_owned()),
            envelope.method.map(|m| m.into_owned()),
            envelope.error.is_some(),
        ))
    }

    /// The scanner never accepts what serde refuses, and reads what serde reads.
    fn agrees(text: &str) -> Option<()> {
        let scanned = envelope(text.as_bytes());
        match (scanned, serde_fields(text)) {
            (Some(fields), Ok((id, method, error))) => {
                assert_eq!(fields.id.map(str::to_owned), id, "id of {text}");
                assert_eq!(fields.method.map(str::to_owned), method, "method of {text}");
                assert_eq!(fields.error, error, "error of {text}");
                Some(())
            }
            (Some(fields), Err(e)) => panic!("scanner accepts {text} ({fields:?}); serde: {e}"),
            (None, _) => None,
        }
    }

    #[test]
    fn reads_what_serde_reads() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#,
            r#"{"jsonrpc":"2.0","id":"a\"b\\c\u00e9","result":{"content":[{"type":"text","text":"x\ny"}]}}"#,
            r#" { "id" : null , "method" : "ping" } "#,
            r#"{"id":-0.5e+10,"error":{"code":-32600,"message":"no"}}"#,
            r#"{"id":1E2,"error":null,"result":[true,false,null,[],{},[[1,2],{"a":[]}]]}"#,
            r#"{"method":"notifications/initialized"}"#,
            r#"{}"#,
            "{\"id\":7,\"result\":\"caf\u{e9} \u{1f600} \u{7f}\"}",
            r#"{"id":1,"params":{"id":2,"method":"nested","error":3},"method":"m"}"#,
            r#"{"":1,"x":{"":""},"id":0}"#,
        ] {
            assert_eq!(agrees(text), Some(()), "the scanner should read {text}");
        }
    }

    #[test]
    fn leaves_to_serde_what_it_does_not_vouch_for() {
        for text in [
            // invalid JSON
            "",
            "{",
            r#"{"id":1,}"#,
            r#"{"id":1 "method":"m"}"#,
            r#"{"id":01}"#,
            r#"{"id":1.}"#,
            r#"{"id":-}"#,
            r#"{"id":1e}"#,
            r#"{"id":1x}"#,
            r#"{"id":tru}"#,
            r#"{"id":"a\x"}"#,
            r#"{"id":"\u12G4"}"#,
            "{\"id\":\"tab\there\"}",
            "{\"id\":\"nul\u{0}\"}",
            r#"{"id":1} x"#,
            r#"{"id":1}{"id":2}"#,
            r#"{"a":[1,2,]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{"b"}}"#,
            r#"{"id":"unterminated}"#,
            r#"[{"id":1}]"#,
            r#""id""#,
            // valid, but serde's to judge
            r#"{"id":1,"id":2}"#,
            r#"{"method":"a","method":"b"}"#,
            r#"{"error":null,"error":1}"#,
            r#"{"method":null}"#,
            r#"{"method":1}"#,
            r#"{"method":"tools\/call"}"#,
            r#"{"\u0069d":5}"#,
        ] {
            assert_eq!(
                agrees(text),
                None,
                "the scanner should leave {text:?} to serde"
            );
        }
        let deep = format!("{{\"id\":{}1{}}}", "[".repeat(150), "]".repeat(150));
        assert_eq!(agrees(&deep), None);
        // serde refuses bad UTF-8 where it reads text (names, borrowed values), not elsewhere.
        assert_eq!(envelope(b"{\"id\":\"\xff\"}"), None);
        assert_eq!(envelope(b"{\"\xff\":1}"), None);
        assert!(envelope(b"{\"id\":1,\"params\":{\"\xff\":\"\xfe\"}}").is_some());
        assert!(serde_json::from_slice::<super::super::Envelope<'_>>(
            b"{\"id\":1,\"params\":{\"\xff\":\"\xfe\"}}"
        )
        .is_ok());
    }

    #[test]
    fn a_large_string_is_read_in_one_pass() {
        let text = format!(
            r#"{{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{{"arguments":{{"message":"{}\"{}"}}}}}}"#,
            "x".repeat(1 << 20),
            "y".repeat(100)
        );
        assert_eq!(agrees(&text), Some(()));
        let broken = text.replacen('x', "\u{1}", 1);
        assert_eq!(agrees(&broken), None);
    }

    /// Every one-byte edit of a few messages: wherever the scanner answers, serde agrees.
    #[test]
    fn agrees_with_serde_on_every_one_byte_edit() {
        let seeds = [
            r#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"a":[1,-2.5e3,true,null],"b":"c\"d\u00e9"}}"#,
            r#"{"id":"x","error":{"code":-1,"data":[{},[]]},"result":false}"#,
        ];
        let replacements = b"\"\\{}[],:0 ae-.+/u\x01";
        let mut vouched = 0;
        for seed in seeds {
            let bytes = seed.as_bytes();
            for at in 0..bytes.len() {
                let mut deleted = bytes.to_vec();
                deleted.remove(at);
                let mut edits = vec![deleted];
                for &with in replacements {
                    let mut replaced = bytes.to_vec();
                    replaced[at] = with;
                    edits.push(replaced.clone());
                    replaced.insert(at, with);
                    edits.push(replaced);
                }
                for edit in edits {
                    let text = String::from_utf8(edit).expect("ASCII edits");
                    vouched += usize::from(agrees(&text).is_some());
                }
            }
        }
        assert!(
            vouched > 100,
            "the edits should include many valid messages ({vouched})"
        );
    }
}
