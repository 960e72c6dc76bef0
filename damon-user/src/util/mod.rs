//! Small utilities: terminal tables, files written whole, text files read with a cap.

pub mod atomic_file;
pub mod table;

use std::{io::Read as _, path::Path};

use anyhow::{Context as _, Result, bail};

/// The text of the file at `path` (`what` names it in errors), refused beyond `max` bytes: an
/// input file is read whole, so a huge one must fail before it costs its size in memory.
pub fn read_text(path: &Path, max: u64, what: &str) -> Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{what} {} is larger than {max} bytes", path.display());
    }
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// Longest message printed whole; a longer one keeps its head (the context) and its tail (the
/// cause) around a note of what was left out.
const MAX_MESSAGE: usize = 600;

/// `text` made fit for one line of a terminal: control characters (newlines, escapes that would
/// drive the terminal) shown escaped, and the middle of an overlong message elided. Messages
/// quote input such as file contents and arguments, which may hold anything.
pub fn one_line(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    let chars: Vec<char> = escaped.chars().collect();
    if chars.len() <= MAX_MESSAGE {
        return escaped;
    }
    let keep = MAX_MESSAGE / 2;
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("{head} [… {} characters left out …] {tail}", chars.len() - 2 * keep)
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn messages_fit_one_line() {
        assert_eq!(one_line("not a pid: '1\n2'"), "not a pid: '1\\n2'");
        assert_eq!(one_line("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(one_line("plain ünïcode"), "plain ünïcode");
        let long = format!("cannot parse {}: expected a number", "x".repeat(10_000));
        let shown = one_line(&long);
        assert!(shown.len() < 700, "{}", shown.len());
        assert!(shown.starts_with("cannot parse xxx"));
        assert!(shown.ends_with("x: expected a number"));
        assert!(shown.contains("characters left out"));
    }
}
