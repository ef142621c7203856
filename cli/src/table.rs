//! Tables laid out as kubectl lays them out, and kubectl's ages.
//!
//! kubectl prints through a Go `tabwriter` (`printers.GetNewTabWriter`: minimum width 6, padding 3, padding
//! character ' ', `RememberWidths`): every column but the last is as wide as its widest cell plus 3 spaces,
//! and at least 6, so a long URL widens its column instead of pushing the rest of its row out of line. The
//! last cell is not padded. A watch keeps the widths it printed with and only widens them.

/// The smallest column width, padding included (kubectl's `tabwriterMinWidth`).
const MIN_WIDTH: usize = 6;
/// Spaces after a column's widest cell (kubectl's `tabwriterPadding`).
const PADDING: usize = 3;

fn cell_width(cell: &str) -> usize {
    cell.chars().count()
}

/// The width of each column of `rows` (the header is a row), padding included.
pub(crate) fn column_widths<S: AsRef<str>>(rows: &[Vec<S>]) -> Vec<usize> {
    let mut widths = Vec::new();
    for row in rows {
        widen_to_fit(&mut widths, row);
    }
    widths
}

/// Widens `widths` so that `row` fits (kubectl's `RememberWidths`: a watch's later rows never narrow a
/// column).
pub(crate) fn widen_to_fit<S: AsRef<str>>(widths: &mut Vec<usize>, row: &[S]) {
    for (column, cell) in row.iter().enumerate() {
        let needed = (cell_width(cell.as_ref()) + PADDING).max(MIN_WIDTH);
        match widths.get_mut(column) {
            Some(width) => *width = (*width).max(needed),
            None => widths.push(needed),
        }
    }
}

/// One line of the table: every cell but the last padded to its column's width; no trailing spaces.
pub(crate) fn format_row<S: AsRef<str>>(row: &[S], widths: &[usize]) -> String {
    let mut line = String::new();
    for (column, cell) in row.iter().enumerate() {
        let cell = cell.as_ref();
        line.push_str(cell);
        if column + 1 < row.len() {
            let width = widths.get(column).copied().unwrap_or(0).max(cell_width(cell) + PADDING);
            line.extend(std::iter::repeat_n(' ', width - cell_width(cell)));
        }
    }
    line.truncate(line.trim_end().len());
    line
}

/// Every line of a table whose first row is its header.
pub(crate) fn format_table<S: AsRef<str>>(rows: &[Vec<S>]) -> Vec<String> {
    let widths = column_widths(rows);
    rows.iter().map(|row| format_row(row, &widths)).collect()
}

/// How long ago, as kubectl's AGE column says it (`duration.HumanDuration` of k8s.io/apimachinery): `45s`,
/// `3m10s`, `15m`, `5h30m`, `10h`, `2d4h`, `20d`, `2y3d`.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The AGE of an object created at `creation_timestamp` (RFC 3339), seen at `now`; `<unknown>` without one.
pub(crate) fn age(creation_timestamp: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> String {
    match creation_timestamp.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(created) => human_duration(now.signed_duration_since(created).num_seconds()),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_plus_three() {
        let lines = format_table(&[
            row(&["NAME", "SUBSCRIBER_URI", "AGE", "READY", "REASON"]),
            row(&["a", "http://x/", "5s", "True", ""]),
            row(&["long-name", "http://a-very-long-host.example.com:8080/with/a/long/path", "3m", "False", "Oops"]),
        ]);
        assert_eq!(
            lines,
            [
                "NAME        SUBSCRIBER_URI                                              AGE   READY   REASON",
                "a           http://x/                                                   5s    True",
                "long-name   http://a-very-long-host.example.com:8080/with/a/long/path   3m    False   Oops",
            ]
        );
        // Every column starts at the same offset on every line.
        let starts = |line: &str| {
            let mut starts = Vec::new();
            let chars: Vec<char> = line.chars().collect();
            for i in 0..chars.len() {
                if chars[i] != ' ' && (i == 0 || chars[i - 1] == ' ') {
                    starts.push(i);
                }
            }
            starts
        };
        assert_eq!(starts(&lines[0]), starts(&lines[2]));
    }

    #[test]
    fn narrow_columns_are_six_wide_and_the_last_is_not_padded() {
        assert_eq!(column_widths(&[row(&["A", "BB", "LAST"])]), [6, 6, 7]);
        assert_eq!(format_table(&[row(&["A", "B"])]), ["A     B"]);
        assert_eq!(format_table(&[row(&["A", ""])]), ["A"], "no trailing spaces");
        // Characters, not bytes.
        assert_eq!(column_widths(&[row(&["ÄÖÜÄÖÜÄ", "x"])])[0], 10);
    }

    #[test]
    fn a_watch_only_widens_columns() {
        let mut widths = column_widths(&[row(&["NAME", "URL"])]);
        widen_to_fit(&mut widths, &row(&["a-much-longer-name", "u"]));
        assert_eq!(widths[0], 21);
        widen_to_fit(&mut widths, &row(&["b", "u"]));
        assert_eq!(widths[0], 21, "kept");
        assert_eq!(format_row(&row(&["b", "u"]), &widths), format!("b{}u", " ".repeat(20)));
        // A row wider than the widths given still keeps three spaces between cells.
        assert_eq!(format_row(&row(&["abcdefgh", "u"]), &[6, 6]), "abcdefgh   u");
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (180, "3m"),
            (190, "3m10s"),
            (15 * 60, "15m"),
            (179 * 60, "179m"),
            (5 * 3600, "5h"),
            (5 * 3600 + 30 * 60, "5h30m"),
            (10 * 3600, "10h"),
            (2 * 86_400, "2d"),
            (2 * 86_400 + 4 * 3600, "2d4h"),
            (20 * 86_400, "20d"),
            (2 * 365 * 86_400 + 3 * 86_400, "2y3d"),
            (9 * 365 * 86_400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(seconds), expected, "{seconds}s");
        }
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z").map(|t| t.to_utc());
        let now = now.expect("a valid time");
        assert_eq!(age(Some("2026-01-01T23:59:15Z"), now), "45s");
        assert_eq!(age(Some("2025-12-31T00:00:00Z"), now), "2d");
        assert_eq!(age(None, now), "<unknown>");
        assert_eq!(age(Some("yesterday"), now), "<unknown>");
    }
}
