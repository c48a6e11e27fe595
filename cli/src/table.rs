//! Tables for people in a terminal, as `fanout dlq` and `kubectl fanout` print them.

/// Rows as aligned columns, two spaces apart, the last column unpadded.
pub fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let rows = vec![
            vec!["SEQ".to_string(), "EVENT ID".into()],
            vec!["1000".to_string(), "evt-1".into()],
        ];
        assert_eq!(columns(&rows), "SEQ   EVENT ID\n1000  evt-1\n");
    }
}
