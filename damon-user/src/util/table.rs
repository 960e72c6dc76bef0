//! Plain-text tables for the terminal: columns padded to their widest cell.

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// `header` and `rows` as lines, two spaces between columns; the last column is not padded.
pub fn render(header: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            let last = c + 1 == columns;
            match align[c] {
                Align::Left if last => out.push_str(cell),
                Align::Left => out.push_str(&format!("{cell}{}", " ".repeat(pad))),
                Align::Right => out.push_str(&format!("{}{cell}", " ".repeat(pad))),
            }
            if !last {
                out.push_str("  ");
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_widest_cell() {
        let rows = vec![
            vec!["a".to_owned(), "1".to_owned(), "x".to_owned()],
            vec!["bbb".to_owned(), "22".to_owned(), "yy".to_owned()],
        ];
        let text = render(&["k", "n", "end"], &[Align::Left, Align::Right, Align::Left], &rows);
        assert_eq!(text, "k     n  end\na     1  x\nbbb  22  yy\n");
    }
}
