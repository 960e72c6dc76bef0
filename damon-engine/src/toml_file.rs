//! TOML files (scenarios, `--config`): one line per error, naming the line at fault.

use anyhow::Result;
use serde::de::DeserializeOwned;

/// `text` read as a `T`; toml's own messages span several lines with a source excerpt, so the
/// first line is kept, after the line number it points at.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T> {
    toml::from_str(text).map_err(|err| {
        let message = err.message().trim_end().to_owned();
        match err.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                anyhow::anyhow!("line {line}: {message}")
            }
            None => anyhow::anyhow!("{message}"),
        }
    })
}
