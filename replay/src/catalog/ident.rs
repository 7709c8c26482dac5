//! SQL identifier helpers: PostgreSQL's `quote_ident` rules and parsing of a
//! `search_path` setting, so names the catalog returns can be put back into
//! SQL and unqualified names resolved the way the server would.

/// Keywords that `quote_ident` quotes: PostgreSQL 15's reserved,
/// type/function-name and column-name keywords (unreserved keywords are
/// valid bare identifiers). Sorted, for binary search.
#[rustfmt::skip]
const QUOTED_KEYWORDS: &[&str] = &[
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization",
    "between", "bigint", "binary", "bit", "boolean", "both", "case", "cast", "char", "character",
    "check", "coalesce", "collate", "collation", "column", "concurrently", "constraint", "create",
    "cross", "current_catalog", "current_date", "current_role", "current_schema", "current_time",
    "current_timestamp", "current_user", "dec", "decimal", "default", "deferrable", "desc",
    "distinct", "do", "else", "end", "except", "exists", "extract", "false", "fetch", "float",
    "for", "foreign", "freeze", "from", "full", "grant", "greatest", "group", "grouping", "having",
    "ilike", "in", "initially", "inner", "inout", "int", "integer", "intersect", "interval",
    "into", "is", "isnull", "join", "lateral", "leading", "least", "left", "like", "limit",
    "localtime", "localtimestamp", "national", "natural", "nchar", "none", "normalize", "not",
    "notnull", "null", "nullif", "numeric", "offset", "on", "only", "or", "order", "out", "outer",
    "overlaps", "overlay", "placing", "position", "precision", "primary", "real", "references",
    "returning", "right", "row", "select", "session_user", "setof", "similar", "smallint", "some",
    "substring", "symmetric", "table", "tablesample", "then", "time", "timestamp", "to",
    "trailing", "treat", "trim", "true", "union", "unique", "user", "using", "values", "varchar",
    "variadic", "verbose", "when", "where", "window", "with", "xmlattributes", "xmlconcat",
    "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces", "xmlparse", "xmlpi", "xmlroot",
    "xmlserialize", "xmltable",
];

/// `name` as PostgreSQL's `quote_ident()` would write it: bare when it is a
/// lower-case identifier that is not a keyword, else double-quoted with inner
/// quotes doubled. Non-ASCII names are always quoted (the server only leaves
/// them bare depending on encoding; quoting is never wrong).
pub fn quote_ident(name: &str) -> String {
    let mut chars = name.chars();
    let safe_start = matches!(chars.next(), Some('a'..='z' | '_'));
    let safe = safe_start
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && QUOTED_KEYWORDS.binary_search(&name).is_err();
    if safe {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `schema.name`, each part quoted with [`quote_ident`].
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Splits a `search_path` value (as `SHOW search_path` or `SET search_path
/// TO ...` gives it) into raw schema names: unquoted parts are folded to
/// lower case, quoted parts keep their case with `""` undoubled. `"$user"`
/// stays `$user`, for [`Catalog::table`](super::Catalog::table) to resolve.
pub fn parse_search_path(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let Some(&first) = chars.peek() else {
            return out;
        };
        let mut name = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                // A doubled quote is a literal one; a single one ends the name.
                if c == '"' && chars.next_if_eq(&'"').is_none() {
                    break;
                }
                name.push(c);
            }
            // Anything glued to the closing quote up to the comma is ignored,
            // as the server would reject it anyway.
            while chars.next_if(|c| *c != ',').is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            name = name.trim().to_lowercase();
        }
        if !name.is_empty() {
            out.push(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted() {
        assert!(QUOTED_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn quotes_like_postgres() {
        assert_eq!(quote_ident("orders"), "orders");
        assert_eq!(quote_ident("_x1"), "_x1");
        assert_eq!(quote_ident("Orders"), "\"Orders\"");
        assert_eq!(quote_ident("1abc"), "\"1abc\"");
        assert_eq!(quote_ident("a b"), "\"a b\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("select"), "\"select\"");
        // Unreserved keywords are fine bare.
        assert_eq!(quote_ident("name"), "name");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_ident("café"), "\"café\"");
        assert_eq!(quote_qualified("App", "t"), "\"App\".t");
    }

    #[test]
    fn parses_search_paths() {
        assert_eq!(parse_search_path("\"$user\", public"), vec!["$user", "public"]);
        assert_eq!(
            parse_search_path("App ,  \"Mixed\"\"Q\",x"),
            vec!["app", "Mixed\"Q", "x"]
        );
        assert_eq!(parse_search_path(""), Vec::<String>::new());
        assert_eq!(parse_search_path("\"\""), Vec::<String>::new());
    }
}
