//! Sentences from a text file: one per line, or one column of a TSV with a header.
//!
//! A first line with a tab is a header when it names the requested column, or (without a request)
//! one of [`TEXT_COLUMNS`]; the sentences are then that column of every later row (GLUE's
//! `sentence<TAB>label`, SST-2's `text<TAB>label`, pair tasks' `sentence1<TAB>sentence2`). Any
//! other file is one sentence per line. Blank sentences are skipped.

/// Header names recognised as the text column, in order of preference.
pub const TEXT_COLUMNS: &[&str] = &[
    "text",
    "sentence",
    "sentence1",
    "sentence_a",
    "sentence_1",
    "query",
    "question",
    "premise",
    "content",
    "review",
    "document",
];

/// Splits `text` into sentences; `column` names the TSV column to read (its header must have it).
pub fn parse(text: &str, column: Option<&str>) -> Result<Vec<String>, String> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let first = lines.next().unwrap_or("");
    let header: Vec<&str> = first.split('\t').map(str::trim).collect();
    let index = match column {
        Some(want) => Some(header.iter().position(|h| *h == want).ok_or_else(|| {
            format!(
                "no column {want:?} in the first line (its columns: {})",
                header.join(", ")
            )
        })?),
        None if header.len() > 1 => TEXT_COLUMNS
            .iter()
            .find_map(|c| header.iter().position(|h| h.eq_ignore_ascii_case(c))),
        None => None,
    };
    let pick = |l: &str| -> String {
        match index {
            Some(i) => l.split('\t').nth(i).unwrap_or("").trim().to_string(),
            None => l.trim().to_string(),
        }
    };
    let rows: Box<dyn Iterator<Item = &str>> = match index {
        Some(_) => Box::new(lines),
        None => Box::new(std::iter::once(first).chain(lines)),
    };
    Ok(rows.map(pick).filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines() {
        assert_eq!(parse("a b\n\n c \n", None).unwrap(), vec!["a b", "c"]);
    }

    #[test]
    fn glue_and_sst2_headers() {
        let glue = "sentence\tlabel\nit is good\t1\nbad\t0\n";
        assert_eq!(parse(glue, None).unwrap(), vec!["it is good", "bad"]);
        let sst = "text\tlabel\r\nfine\t1\r\n";
        assert_eq!(parse(sst, None).unwrap(), vec!["fine"]);
        let pairs = "idx\tsentence1\tsentence2\n0\tfirst\tsecond\n";
        assert_eq!(parse(pairs, None).unwrap(), vec!["first"]);
        assert_eq!(parse(pairs, Some("sentence2")).unwrap(), vec!["second"]);
    }

    #[test]
    fn unknown_headers_are_lines_and_missing_columns_are_errors() {
        let t = "a\tb\nc\td\n";
        assert_eq!(parse(t, None).unwrap(), vec!["a\tb", "c\td"]);
        let e = parse(t, Some("text")).unwrap_err();
        assert!(
            e.contains("no column \"text\"") && e.contains("a, b"),
            "{e}"
        );
    }
}
