//! CSV for accounting exports (RFC 4180: comma-separated, CRLF line ends, a cell quoted when it
//! holds a comma, quote or line break, quotes doubled), shared by every service that exports.
//!
//! Text cells are guarded against CSV injection: a spreadsheet would run a cell that starts
//! with `=`, `+`, `-`, `@` (or a tab or carriage return) as a formula, so such a cell gets a
//! leading `'`. Number cells are written as they are (a spreadsheet reads `-500` as a number).

use chrono::{DateTime, SecondsFormat, Utc};

/// An export's `[from, to)` (microseconds since the epoch, as the request carries them): both
/// given, in order, and at most `max_days` apart.
pub fn export_range(
    from_micros: i64,
    to_micros: i64,
    max_days: i64,
) -> Result<(DateTime<Utc>, DateTime<Utc>), crate::ApiError> {
    let time = |micros: i64, name: &str| {
        DateTime::from_timestamp_micros(micros)
            .filter(|_| micros != 0)
            .ok_or_else(|| {
                crate::ApiError::invalid(format!("{name} is required (RFC 3339, e.g. 2026-11-01T00:00:00Z)"))
            })
    };
    let (from, to) = (time(from_micros, "from")?, time(to_micros, "to")?);
    if from >= to {
        return Err(crate::ApiError::invalid("from must be before to"));
    }
    if to - from > chrono::Duration::days(max_days) {
        return Err(crate::ApiError::invalid(format!(
            "from and to are {} days apart; export at most {max_days} days per call",
            (to - from).num_days()
        )));
    }
    Ok((from, to))
}

/// A text cell: guarded against formula injection, then quoted when it must be.
pub fn text(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// A time cell: RFC 3339 in UTC with milliseconds (`2026-01-05T10:00:00.000Z`).
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One CRLF-terminated row of cells already made by [`text`], [`time`] or a number's
/// `to_string`.
pub fn row<S: AsRef<str>>(cells: &[S]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(cell.as_ref());
    }
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_guarded() {
        assert_eq!(text("plain"), "plain");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(text("two\nlines"), "\"two\nlines\"");
        assert_eq!(text("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(text("+1"), "'+1");
        assert_eq!(text("-1"), "'-1");
        assert_eq!(text("@sum"), "'@sum");
        assert_eq!(text("\tx"), "'\tx");
        assert_eq!(text(""), "");
    }

    #[test]
    fn rows_end_in_crlf_and_times_in_z() {
        assert_eq!(row(&["a", "b", ""]), "a,b,\r\n");
        assert_eq!(row::<&str>(&[]), "\r\n");
        let at = DateTime::from_timestamp_micros(1_767_607_200_250_000).unwrap_or_default();
        assert_eq!(time(at), "2026-01-05T10:00:00.250Z");
    }
}
