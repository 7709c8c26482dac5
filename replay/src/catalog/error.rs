//! Errors of catalog introspection. They are the database's doing (a query
//! refused, a connection lost) or a catalog the code does not understand.

/// Why a catalog snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A catalog query failed on the server or the connection broke.
    #[error("catalog: {what} failed: {message} [SQLSTATE {}]\nSQL: {sql}", sqlstate.as_deref().unwrap_or("none"))]
    Query {
        /// What the query was for ("load tables", "begin snapshot"...).
        what: &'static str,
        /// The SQL text that failed.
        sql: String,
        /// The server's message, or the client error when there is none.
        message: String,
        /// The SQLSTATE the server sent, if it sent one.
        sqlstate: Option<String>,
        /// The underlying error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server returned a value this code does not know (a newer
    /// PostgreSQL with a new `relkind`, say).
    #[error("catalog: unexpected {field} value {value:?} for {object}")]
    Unexpected {
        /// The catalog column (`pg_class.relkind`...).
        field: &'static str,
        /// What it held.
        value: String,
        /// The object it belongs to.
        object: String,
    },
}

impl CatalogError {
    /// Wraps a failed query, keeping the server's message and SQLSTATE.
    pub(crate) fn query(what: &'static str, sql: &str, source: tokio_postgres::Error) -> Self {
        let message = match source.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => crate::error_message(&source),
        };
        CatalogError::Query {
            what,
            sql: sql.to_owned(),
            message,
            sqlstate: source.code().map(|c| c.code().to_owned()),
            source,
        }
    }

    /// An unknown catalog value.
    pub(crate) fn unexpected(field: &'static str, value: &str, object: impl ToString) -> Self {
        CatalogError::Unexpected {
            field,
            value: value.to_owned(),
            object: object.to_string(),
        }
    }
}
