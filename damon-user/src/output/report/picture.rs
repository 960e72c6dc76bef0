//! Drawing a heatmap: ASCII for the terminal (digits 0–9, ANSI colours on request), PNG pixels,
//! or an SVG with axes and labels. No gnuplot.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use base64::Engine as _;

use super::heatmap::Heatmap;
use damon_engine::units::format_size;

/// Black → purple → orange → pale yellow, as the rate goes 0 → 1.
fn colour(rate: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 4] =
        [[0.0, 0.0, 4.0], [120.0, 28.0, 109.0], [237.0, 105.0, 37.0], [252.0, 255.0, 164.0]];
    let x = rate.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    std::array::from_fn(|c| (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f).round() as u8)
}

const EMPTY: [u8; 3] = [255, 255, 255];

/// One character per cell: the rate in tenths (`9` for the top tenth), blank where unmonitored.
pub fn cell_char(rate: Option<f64>) -> char {
    rate.map_or(' ', |r| char::from_digit(((r * 10.0) as u32).min(9), 10).unwrap_or('9'))
}

/// Rows of digits, with 256-colour backgrounds when `colour` is set.
pub fn ascii(map: &Heatmap, colours: bool) -> String {
    let mut out = String::new();
    for row in &map.rows {
        for &cell in row {
            let c = cell_char(cell);
            match cell {
                Some(rate) if colours => {
                    let [r, g, b] = colour(rate);
                    let index = 16
                        + 36 * (r as u16 * 6 / 256)
                        + 6 * (g as u16 * 6 / 256)
                        + b as u16 * 6 / 256;
                    let fg = if rate > 0.6 { 16 } else { 250 };
                    let _ = write!(out, "\x1b[48;5;{index}m\x1b[38;5;{fg}m{c}");
                }
                _ => out.push(c),
            }
        }
        out.push_str(if colours { "\x1b[0m\n" } else { "\n" });
    }
    out
}

/// PNG: time left to right, addresses bottom to top, `scale` pixels per cell.
pub fn png(map: &Heatmap, scale: u32) -> Result<Vec<u8>> {
    let (rows, cols) = (map.rows.len() as u32, map.rows.first().map_or(0, Vec::len) as u32);
    let (width, height) = (rows * scale, cols * scale);
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        let col = (cols - 1 - y / scale) as usize;
        for x in 0..width {
            let cell = map.rows[(x / scale) as usize][col];
            pixels.extend_from_slice(&cell.map_or(EMPTY, colour));
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode the PNG")?;
    writer.write_image_data(&pixels).context("cannot encode the PNG")?;
    writer.finish().context("cannot encode the PNG")?;
    Ok(out)
}

/// SVG with the same orientation as the PNG, plus axes, span boundaries and a colour scale.
pub fn svg(map: &Heatmap, title: &str) -> Result<String> {
    let cols = map.rows.first().map_or(0, Vec::len);
    let (plot_w, plot_h) = (800.0, 500.0);
    let (left, top) = (110.0, 40.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
        left + plot_w + 90.0,
        top + plot_h + 60.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        left + plot_w / 2.0,
        escape(title)
    );
    // The cells as an embedded PNG, one pixel each, scaled without smoothing: a few kilobytes
    // where one rectangle per cell would take megabytes.
    let _ = writeln!(
        out,
        r#"<image x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" preserveAspectRatio="none" style="image-rendering:pixelated" href="data:image/png;base64,{}"/>"#,
        base64::engine::general_purpose::STANDARD.encode(png(map, 1)?)
    );
    let _ = writeln!(
        out,
        r#"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    // Time ticks, in seconds from the record's start.
    let seconds = (map.end_ns - map.start_ns) as f64 / 1e9;
    for i in 0..=4 {
        let x = left + plot_w * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{}" text-anchor="middle">{:.1} s</text>"#,
            top + plot_h + 18.0,
            seconds * i as f64 / 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">time</text>"#,
        left + plot_w / 2.0,
        top + plot_h + 40.0
    );
    // Address ticks, and a dashed line where one span ends and the next begins.
    for i in 0..=4 {
        let col = cols * i / 4;
        let y = top + plot_h - plot_h * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{y}" text-anchor="end" dominant-baseline="middle">{:#x}</text>"#,
            left - 6.0,
            map.address_at(col, cols)
        );
    }
    for span in map.spans.iter().skip(1) {
        let y = top + plot_h - plot_h * span.offset() as f64 / map.axis_len().max(1) as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{left}" x2="{}" y1="{y:.2}" y2="{y:.2}" stroke="gray" stroke-dasharray="4 3"/>"#,
            left + plot_w
        );
    }
    // Colour scale.
    let scale_x = left + plot_w + 30.0;
    for i in 0..50 {
        let [r, g, b] = colour(i as f64 / 49.0);
        let y = top + plot_h - (i + 1) as f64 * plot_h / 50.0;
        let _ = writeln!(
            out,
            r#"<rect x="{scale_x}" y="{y:.2}" width="16" height="{:.2}" fill="rgb({r},{g},{b})"/>"#,
            plot_h / 50.0 + 0.05
        );
    }
    let _ = writeln!(out, r#"<text x="{}" y="{}">100 %</text>"#, scale_x + 20.0, top + 10.0);
    let _ = writeln!(out, r#"<text x="{}" y="{}">0 %</text>"#, scale_x + 20.0, top + plot_h);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="{}">{} monitored in {} span(s); cell: access rate</text>"#,
        top + plot_h + 56.0,
        format_size(map.axis_len()),
        map.spans.len()
    );
    out.push_str("</svg>\n");
    Ok(out)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::record::{RecordedSnapshot, Region};

    fn map() -> Heatmap {
        let s = [RecordedSnapshot {
            sample_us: None,
            schemes: Vec::new(),
            start_ns: 0,
            end_ns: 1_000_000_000,
            regions: vec![Region::new(0, 4096, 20, 0), Region::new(4096, 8192, 0, 0)],
        }];
        Heatmap::new(&s, 3, 2, None, 20)
    }

    #[test]
    fn ascii_digits_scale_with_the_rate() {
        assert_eq!(ascii(&map(), false), "90\n90\n90\n");
        assert!(ascii(&map(), true).contains("\x1b[48;5;"));
        assert_eq!(cell_char(None), ' ');
        assert_eq!(cell_char(Some(0.55)), '5');
    }

    #[test]
    fn png_has_the_cells_pixels_with_low_addresses_at_the_bottom() {
        let bytes = png(&map(), 2).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), (6, 4));
        // Top row: the cold upper half (black); bottom row: the hot lower half (bright).
        assert_eq!(&pixels[..3], &colour(0.0));
        let bottom = (3 * 6) * 3;
        assert_eq!(&pixels[bottom..bottom + 3], &colour(1.0));
    }

    #[test]
    fn svg_is_a_document_with_cells_and_axes() {
        let text = svg(&map(), "pid <1>").unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert_eq!(text.matches("<rect").count(), 1 + 50);
        assert_eq!(text.matches("data:image/png;base64,").count(), 1);
        assert!(text.contains("pid &lt;1&gt;") && text.contains("0x1000"));
    }
}
