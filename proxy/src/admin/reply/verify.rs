//! VERIFY's outcome: one row per table compared, with what differs; the
//! command tag says whether anything does.

use super::{fixed, ConsoleReply, ReplyError, ReplyRows, ResultSet, WireValue};

/// The columns, in the order sent.
const COLUMNS: [&str; 11] = [
    "table",
    "target",
    "rows_checked",
    "target_rows",
    "ranges",
    "ranges_rechecked",
    "differing",
    "differing_keys",
    "compared_as_text",
    "not_compared",
    "ms",
];

/// What VERIFY answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReply {
    /// Per table, in source name order.
    pub tables: Vec<VerifyTable>,
}

/// One table compared.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyTable {
    /// The source table.
    pub table: String,
    /// The target table.
    pub target: String,
    /// Source rows checked.
    pub rows_checked: u64,
    /// Target rows checked.
    pub target_rows: u64,
    /// Key ranges checked.
    pub ranges: u64,
    /// Ranges that differed at first and were checked again.
    pub ranges_rechecked: u64,
    /// Keys that differ, all of them.
    pub differing: u64,
    /// The differing keys listed, each as `(key values) how`, `; `-separated.
    pub differing_keys: String,
    /// Columns compared as the text of the source value, `, `-separated.
    pub compared_as_text: String,
    /// Target columns not compared, `, `-separated.
    pub not_compared: String,
    /// Time taken, ms.
    pub ms: f64,
}

impl VerifyReply {
    /// Keys that differ, over all tables.
    pub fn differing(&self) -> u64 {
        self.tables.iter().map(|t| t.differing).sum()
    }
}

impl ConsoleReply for VerifyReply {
    const COMMAND: &'static str = "VERIFY";

    fn to_rows(&self) -> ResultSet {
        let mut r = ResultSet::new(&COLUMNS);
        for t in &self.tables {
            r.row([
                t.table.clone(),
                t.target.clone(),
                t.rows_checked.to_string(),
                t.target_rows.to_string(),
                t.ranges.to_string(),
                t.ranges_rechecked.to_string(),
                t.differing.to_string(),
                t.differing_keys.clone(),
                t.compared_as_text.clone(),
                t.not_compared.clone(),
                fixed(t.ms, 0),
            ]);
        }
        r.tag = if self.differing() == 0 {
            "VERIFY".into()
        } else {
            "VERIFY DIFFERS".into()
        };
        r
    }

    fn from_rows(rows: &ReplyRows) -> Result<VerifyReply, ReplyError> {
        // By name: a newer proxy may add columns.
        let at = |column: &'static str| {
            rows.columns
                .iter()
                .position(|c| c == column)
                .ok_or_else(|| ReplyError::Missing {
                    command: Self::COMMAND,
                    key: column.to_owned(),
                })
        };
        let at: Vec<usize> = COLUMNS.iter().map(|c| at(c)).collect::<Result<_, _>>()?;
        let tables = rows
            .rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let cell = |c: usize| -> Result<String, ReplyError> { value(row, i, COLUMNS[c], at[c]) };
                let number = |c: usize| -> Result<u64, ReplyError> { value(row, i, COLUMNS[c], at[c]) };
                Ok(VerifyTable {
                    table: cell(0)?,
                    target: cell(1)?,
                    rows_checked: number(2)?,
                    target_rows: number(3)?,
                    ranges: number(4)?,
                    ranges_rechecked: number(5)?,
                    differing: number(6)?,
                    differing_keys: cell(7)?,
                    compared_as_text: cell(8)?,
                    not_compared: cell(9)?,
                    ms: value(row, i, COLUMNS[10], at[10])?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(VerifyReply { tables })
    }
}

/// Row `i`'s value in `column`, found at `at`.
fn value<T: WireValue>(row: &[String], i: usize, column: &str, at: usize) -> Result<T, ReplyError> {
    let text = row.get(at).map_or("", String::as_str);
    T::read(text).ok_or_else(|| ReplyError::Invalid {
        command: VerifyReply::COMMAND,
        key: format!("{column} (row {})", i + 1),
        value: text.to_owned(),
        expected: T::WHAT,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::round_trip;
    use super::*;

    fn table(name: &str, differing: u64, keys: &str) -> VerifyTable {
        VerifyTable {
            table: format!("public.{name}"),
            target: format!("app.{name}"),
            rows_checked: 3000,
            target_rows: 2999,
            ranges: 6,
            ranges_rechecked: 1,
            differing,
            differing_keys: keys.to_owned(),
            compared_as_text: "tags, doc".to_owned(),
            not_compared: String::new(),
            ms: 42.0,
        }
    }

    fn differs() -> VerifyReply {
        VerifyReply {
            tables: vec![
                table("item", 2, "(1234) differs; (NULL, b) missing on the target"),
                table("tag", 0, ""),
            ],
        }
    }

    #[test]
    fn round_trips_and_the_tag_says_whether_anything_differs() {
        round_trip(&differs());
        round_trip(&VerifyReply::default());
        assert_eq!(differs().to_rows().tag, "VERIFY DIFFERS");
        assert_eq!(differs().differing(), 2);
        let clean = VerifyReply {
            tables: vec![table("tag", 0, "")],
        };
        assert_eq!(clean.to_rows().tag, "VERIFY");
        round_trip(&clean);
    }

    #[test]
    fn columns_are_read_by_name_and_a_missing_one_is_named() {
        let mut rows = ReplyRows::from(&differs().to_rows());
        // A newer proxy's extra column, first.
        rows.columns.insert(0, "schema_version".to_owned());
        for r in &mut rows.rows {
            r.insert(0, "2".to_owned());
        }
        assert_eq!(VerifyReply::from_rows(&rows), Ok(differs()));
        let mut rows = ReplyRows::from(&differs().to_rows());
        rows.columns[6] = "differences".to_owned();
        let e = VerifyReply::from_rows(&rows).unwrap_err();
        assert_eq!(
            e,
            ReplyError::Missing {
                command: "VERIFY",
                key: "differing".to_owned()
            }
        );
        assert!(e.to_string().contains("VERIFY reply has no \"differing\""), "{e}");
    }

    #[test]
    fn a_value_that_does_not_read_names_its_column_and_row() {
        let mut rows = ReplyRows::from(&differs().to_rows());
        rows.rows[1][6] = "some".to_owned();
        let e = VerifyReply::from_rows(&rows).unwrap_err().to_string();
        assert!(
            e.contains("\"differing (row 2)\" is \"some\", not a whole number"),
            "{e}"
        );
    }
}
