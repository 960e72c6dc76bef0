//! Human units on the command line and in scenario files: sizes (`16GiB`, `4096`, `1.5M`) and
//! durations (`100ms`, `1h`, `5000us`).

use std::fmt;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The leading number (without `_` separators) and the unit after it.
fn split_number(text: &str) -> Result<(String, f64, &str)> {
    let text = text.trim();
    let end =
        text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(text.len());
    let (digits, unit) = text.split_at(end);
    let digits = digits.replace('_', "");
    if text.starts_with('-') {
        bail!("`{text}` is negative");
    }
    let Ok(number) = digits.parse::<f64>() else {
        bail!("`{text}` does not start with a number");
    };
    Ok((digits, number, unit.trim()))
}

/// Bytes, with binary (KiB, MiB, GiB, TiB; also K, M, G, T) or no suffix.
pub fn parse_size(text: &str) -> Result<u64> {
    let (digits, number, unit) = split_number(text)?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => bail!("unknown size unit `{unit}` in `{text}` (use B, KiB, MiB, GiB or TiB)"),
    };
    // Whole numbers exactly (an f64 has 53 bits: near 2^64 it would round up into range).
    let bytes = match digits.parse::<u128>() {
        Ok(n) => n.checked_mul(scale.into()).and_then(|b| u64::try_from(b).ok()),
        Err(_) => {
            let bytes = number * scale as f64;
            if bytes.fract() != 0.0 {
                bail!("`{text}` is not a whole number of bytes");
            }
            // u64::MAX as f64 is 2^64 itself, which does not fit.
            (bytes < u64::MAX as f64).then_some(bytes as u64)
        }
    };
    bytes.with_context(|| format!("`{text}` is 2^64 bytes or more: too large"))
}

/// Microseconds, from us, ms, s, m or h (no suffix: microseconds).
pub fn parse_duration_us(text: &str) -> Result<u64> {
    let (_, number, unit) = split_number(text)?;
    let scale: f64 = match unit {
        "" | "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" | "min" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown time unit `{unit}` in `{text}` (use us, ms, s, m or h)"),
    };
    let us = (number * scale).round();
    if us >= u64::MAX as f64 {
        bail!("`{text}` is 2^64 microseconds or more: too long");
    }
    Ok(us as u64)
}

pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A number in the largest unit that divides it exactly (`16GiB`, `90s`), else in `fallback`.
fn write_exact(
    f: &mut fmt::Formatter<'_>,
    value: u64,
    units: &[(&str, u64)],
    fallback: &str,
) -> fmt::Result {
    match units.iter().find(|&&(_, scale)| value >= scale && value.is_multiple_of(scale)) {
        Some((suffix, scale)) => write!(f, "{}{suffix}", value / scale),
        None => write!(f, "{value}{fallback}"),
    }
}

/// Reads a bare number or a text with units through `parse`; a number that is not a whole
/// unsigned one (`-5`, `1.5`, or a float such as `1.5e9`) is read as the text it would be written
/// as, so it gets the text's checks and messages.
fn number_or_text<'de, D: Deserializer<'de>>(
    d: D,
    parse: fn(&str) -> Result<u64>,
) -> Result<u64, D::Error> {
    struct Visitor(fn(&str) -> Result<u64>);
    impl de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or a text with a unit such as \"64MiB\" or \"100ms\"")
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            // TOML's integers come as i64: whole ones read exactly, negative ones as text.
            match u64::try_from(n) {
                Ok(n) => Ok(n),
                Err(_) => self.visit_str(&n.to_string()),
            }
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
            self.visit_str(&n.to_string())
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            (self.0)(text).map_err(|err| E::custom(format!("{err:#}")))
        }
    }
    d.deserialize_any(Visitor(parse))
}

/// A byte size that reads `"16GiB"` or `1024` and writes the exact byte count in the largest
/// binary unit that divides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_exact(
            f,
            self.0,
            &[("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)],
            "",
        )
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, parse_size).map(Size)
    }
}

/// A duration that reads `"10s"` or a number of microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Micros(pub u64);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_exact(
            f,
            self.0,
            &[("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000)],
            "us",
        )
    }
}

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, parse_duration_us).map(Micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_size("1.5 MiB").unwrap(), 3 << 19);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert!(parse_size("1.5B").is_err());
        assert!(parse_size("12 parsecs").unwrap_err().to_string().contains("unknown size unit"));
        assert!(parse_size("GiB").is_err());
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
        for huge in [
            "18446744073709551616",
            "16777216TiB",
            "16777216.0TiB",
            "99999999999999999999999999999999999999999",
        ] {
            let err = parse_size(huge).unwrap_err().to_string();
            assert!(err.ends_with("is 2^64 bytes or more: too large"), "{huge}: {err}");
        }
        assert_eq!(Size(16 << 30).to_string(), "16GiB");
        assert_eq!(Size((1 << 20) + 1).to_string(), "1048577");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("5000").unwrap(), 5000);
        assert_eq!(parse_duration_us("100ms").unwrap(), 100_000);
        assert_eq!(parse_duration_us("1h").unwrap(), 3_600_000_000);
        assert_eq!(parse_duration_us("1.5s").unwrap(), 1_500_000);
        assert!(parse_duration_us("3 fortnights").is_err());
        // Too long for the microsecond counters: refused, not taken for "forever".
        let err = parse_duration_us("100000000000h").unwrap_err().to_string();
        assert!(err.contains("2^64 microseconds or more"), "{err}");
        assert!(parse_duration_us("18446744073709551616").is_err());
        assert_eq!(Micros(90_000_000).to_string(), "90s");
        assert_eq!(Micros(2_500).to_string(), "2500us");
    }

    #[test]
    fn bad_numbers_say_what_is_wrong() {
        assert_eq!(parse_size("-5").unwrap_err().to_string(), "`-5` is negative");
        assert_eq!(parse_duration_us("-1s").unwrap_err().to_string(), "`-1s` is negative");
        assert_eq!(parse_size("x").unwrap_err().to_string(), "`x` does not start with a number");
    }

    #[test]
    fn files_take_numbers_of_any_toml_kind_or_texts() {
        #[derive(Deserialize)]
        struct File {
            size: Size,
            sample: Micros,
        }
        let read = |text: &str| toml::from_str::<File>(text).map(|f| (f.size.0, f.sample.0));
        assert_eq!(read("size = 1.5e9\nsample = 5000").unwrap(), (1_500_000_000, 5000));
        assert_eq!(read("size = \"1GiB\"\nsample = 5.5").unwrap(), (1 << 30, 6));
        let err = |text: &str| read(text).unwrap_err().message().to_owned();
        assert_eq!(err("size = -5\nsample = 1"), "`-5` is negative");
        assert_eq!(err("size = 1.5\nsample = 1"), "`1.5` is not a whole number of bytes");
        assert!(
            err("size = 1\n[sample]\n")
                .starts_with("invalid type: map, expected a number or a text"),
            "{}",
            err("size = 1\n[sample]\n")
        );
    }
}
