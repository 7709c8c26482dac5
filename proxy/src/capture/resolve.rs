//! What an unqualified table name means in one session: its search_path and
//! the role `"$user"` stands for, followed through SET / SET LOCAL / RESET,
//! `set_config` with literal arguments, SET ROLE and SET SESSION
//! AUTHORIZATION, with transactions and savepoints undoing what they set.
//!
//! This is a best effort that makes the key projection name the right
//! columns in the common cases; it is not what makes capture safe. The
//! server can always resolve a name differently (a `set_config` with
//! computed arguments, a prepared statement re-planned under another path),
//! so each captured row carries its `tableoid`, and the row is logged under
//! the table that oid names (see `SessionCapture::commit_step`).

use switchyard_replay::catalog::{parse_search_path, Catalog, Table, TableKind};

/// Where a row the server reported with some `tableoid` is logged.
#[derive(Debug)]
pub(crate) enum Target<'c> {
    /// Under the table the statement's name was resolved to (the row is
    /// in it or in one of its partitions).
    Same,
    /// Under this other table, whose key columns are the projected ones.
    Other(&'c Table),
    /// This table's key is not what was projected: the values are not its key.
    Mismatch(&'c Table),
    /// The catalog does not know the oid.
    Unknown,
}

/// Where a row with `tableoid` `oid`, written by a statement whose name
/// resolved to the table `named` keyed by `key_columns`, is logged. A
/// partition's rows go under the topmost table it is attached to, as they
/// do when the statement names that table.
pub(crate) fn target<'c>(catalog: &'c Catalog, named: u32, key_columns: &[String], oid: u32) -> Target<'c> {
    let Some(mut t) = catalog.table_by_oid(oid) else {
        return Target::Unknown;
    };
    // Partitions nest a few levels at most; the bound guards a corrupt catalog.
    for _ in 0..64 {
        if t.oid == named {
            return Target::Same;
        }
        let TableKind::Partition { parent, .. } = &t.kind else {
            break;
        };
        match catalog.table_exact(&parent.schema, &parent.name) {
            Some(p) => t = p,
            None => break,
        }
    }
    match &t.key {
        Some(k) if k.columns == key_columns => Target::Other(t),
        _ => Target::Mismatch(t),
    }
}

/// How long a setting lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Until changed again (rolled back with its transaction).
    Session,
    /// Until the end of the transaction (SET LOCAL, `set_config(.., true)`).
    Local,
}

/// A change to what names resolve to, read from one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// search_path set to these schemas.
    Path(Scope, Vec<String>),
    /// search_path back to the session's initial value (RESET, DEFAULT).
    PathDefault(Scope),
    /// SET ROLE name (`None`: NONE / RESET ROLE).
    Role(Scope, Option<String>),
    /// SET SESSION AUTHORIZATION name (`None`: DEFAULT / RESET).
    Authorization(Option<String>),
    /// RESET ALL / DISCARD ALL.
    All,
    /// search_path or role changed to something not read from the text
    /// (`set_config` with computed arguments).
    Unknown,
}

/// Whether the tracked search_path is what the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Certainty {
    /// Every change to it was read.
    Known,
    /// A change was not read: resolution by name is a guess.
    Guessed,
}

/// One tracked value: the session's, one set inside the open transaction
/// (kept only if it commits), and a transaction-local override.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tracked<T> {
    session: T,
    pending: Option<T>,
    local: Option<T>,
}

impl<T: Clone> Tracked<T> {
    fn new(value: T) -> Tracked<T> {
        Tracked {
            session: value,
            pending: None,
            local: None,
        }
    }

    fn current(&self) -> &T {
        self.local.as_ref().or(self.pending.as_ref()).unwrap_or(&self.session)
    }

    fn set(&mut self, scope: Scope, value: T) {
        match scope {
            Scope::Session => {
                // A later SET overrides an earlier SET LOCAL, as in the server.
                self.local = None;
                self.pending = Some(value);
            }
            Scope::Local => self.local = Some(value),
        }
    }

    fn end(&mut self, committed: bool) {
        if let (true, Some(v)) = (committed, self.pending.take()) {
            self.session = v;
        }
        self.pending = None;
        self.local = None;
    }
}

/// The state a savepoint restores.
#[derive(Debug, Clone)]
struct Saved {
    name: String,
    path: Tracked<Vec<String>>,
    role: Tracked<Option<String>>,
    authorization: Tracked<String>,
    certainty: Tracked<Certainty>,
}

/// A session's name resolution context.
#[derive(Debug, Clone)]
pub(crate) struct SearchPath {
    /// The value RESET returns to: the server's as the session began
    /// (the database's or role's setting, else the built-in default).
    initial: Vec<String>,
    path: Tracked<Vec<String>>,
    /// SET ROLE, over the session authorization.
    role: Tracked<Option<String>>,
    authorization: Tracked<String>,
    certainty: Tracked<Certainty>,
    savepoints: Vec<Saved>,
    /// The current path with `"$user"` replaced, kept up to date.
    resolved: Vec<String>,
}

impl SearchPath {
    /// A session whose search_path is `path` (empty: the server default)
    /// and whose current user is `user`.
    pub(crate) fn new(path: Vec<String>, user: String) -> SearchPath {
        let mut p = SearchPath {
            initial: path.clone(),
            path: Tracked::new(path),
            role: Tracked::new(None),
            authorization: Tracked::new(user),
            certainty: Tracked::new(Certainty::Known),
            savepoints: Vec::new(),
            resolved: Vec::new(),
        };
        p.resolve();
        p
    }

    fn resolve(&mut self) {
        let user = self.user().to_owned();
        self.resolved = self
            .path
            .current()
            .iter()
            .map(|s| if s == "$user" { user.clone() } else { s.clone() })
            .collect();
    }

    /// Takes the values the server reported (outside any transaction):
    /// they replace everything assumed so far.
    ///
    /// `path` is the value in force, `reset` the one RESET restores (the
    /// session's default: startup options, the role's and the database's
    /// settings), `session_user` the login `SET SESSION AUTHORIZATION`
    /// changes and `current_user` the role in force (a `SET ROLE` made
    /// before capture started).
    pub(crate) fn learned(
        &mut self,
        path: Vec<String>,
        reset: Vec<String>,
        session_user: String,
        current_user: String,
    ) {
        let mut p = SearchPath::new(path, session_user);
        p.initial = reset;
        if current_user != *p.authorization.current() {
            p.role = Tracked::new(Some(current_user));
        }
        p.resolve();
        *self = p;
    }

    /// The schemas an unqualified name is looked up in, `"$user"` replaced
    /// by the current role.
    pub(crate) fn schemas(&self) -> &[String] {
        &self.resolved
    }

    /// Whether [`SearchPath::schemas`] is known to be the server's.
    pub(crate) fn certainty(&self) -> Certainty {
        *self.certainty.current()
    }

    /// The role `"$user"` means now.
    pub(crate) fn user(&self) -> &str {
        match self.role.current() {
            Some(r) => r,
            None => self.authorization.current(),
        }
    }

    /// A statement that changes resolution completed.
    pub(crate) fn apply(&mut self, change: &Change) {
        match change {
            Change::Path(scope, p) => {
                self.path.set(*scope, p.clone());
                self.certainty.set(*scope, Certainty::Known);
            }
            Change::PathDefault(scope) => {
                self.path.set(*scope, self.initial.clone());
                self.certainty.set(*scope, Certainty::Known);
            }
            // Kept until a SET that is read: the guess may outlive a
            // transaction-local change, never the other way round.
            Change::Unknown => self.certainty.set(Scope::Session, Certainty::Guessed),
            Change::Role(scope, r) => self.role.set(*scope, r.clone()),
            Change::Authorization(a) => {
                let user = a.clone().unwrap_or_else(|| self.authorization.session.clone());
                self.authorization.set(Scope::Session, user);
                self.role.set(Scope::Session, None);
            }
            Change::All => {
                self.path.set(Scope::Session, self.initial.clone());
                self.role.set(Scope::Session, None);
                self.certainty.set(Scope::Session, Certainty::Known);
            }
        }
        self.resolve();
    }

    /// The transaction ended: what it set stays if it committed.
    pub(crate) fn end_tx(&mut self, committed: bool) {
        self.path.end(committed);
        self.role.end(committed);
        self.authorization.end(committed);
        self.certainty.end(committed);
        self.savepoints.clear();
        self.resolve();
    }

    /// SAVEPOINT name.
    pub(crate) fn savepoint(&mut self, name: &str) {
        self.savepoints.push(Saved {
            name: name.to_owned(),
            path: self.path.clone(),
            role: self.role.clone(),
            authorization: self.authorization.clone(),
            certainty: self.certainty.clone(),
        });
    }

    /// ROLLBACK TO name: the values as of the savepoint, which stays.
    pub(crate) fn rollback_to(&mut self, name: &str) {
        if let Some(i) = self.savepoints.iter().rposition(|s| s.name == name) {
            let s = &self.savepoints[i];
            self.path = s.path.clone();
            self.role = s.role.clone();
            self.authorization = s.authorization.clone();
            self.certainty = s.certainty.clone();
            self.savepoints.truncate(i + 1);
            self.resolve();
        }
    }

    /// RELEASE name: what was set since stays.
    pub(crate) fn release(&mut self, name: &str) {
        if let Some(i) = self.savepoints.iter().rposition(|s| s.name == name) {
            self.savepoints.truncate(i);
        }
    }
}

/// The resolution change a SET, RESET or DISCARD statement makes, if any.
pub(crate) fn utility_change(text: &str) -> Option<Change> {
    let words: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .take(4)
        .map(str::to_ascii_lowercase)
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["reset", "all", ..] | ["discard", "all", ..] => Some(Change::All),
        ["reset", "search_path", ..] => Some(Change::PathDefault(Scope::Session)),
        ["reset", "role", ..] => Some(Change::Role(Scope::Session, None)),
        ["reset", "session", "authorization", ..] => Some(Change::Authorization(None)),
        ["set", "session", "authorization", ..] => {
            let value = after_words(text, 3)?;
            let value = unquote(value);
            Some(Change::Authorization(
                (!value.eq_ignore_ascii_case("default")).then_some(value),
            ))
        }
        ["set", rest @ ..] => {
            let (scope, skip) = match rest.first() {
                Some(&"local") => (Scope::Local, 2),
                Some(&"session") => (Scope::Session, 2),
                _ => (Scope::Session, 1),
            };
            match w.get(skip) {
                Some(&"role") => {
                    let value = unquote(after_words(text, skip + 1)?);
                    Some(Change::Role(
                        scope,
                        (!value.eq_ignore_ascii_case("none")).then_some(value),
                    ))
                }
                Some(n) if *n == "search_path" || n.starts_with("search_path=") => {
                    let value = text_after_name(text, "search_path")?;
                    if value.eq_ignore_ascii_case("default") {
                        Some(Change::PathDefault(scope))
                    } else {
                        Some(Change::Path(scope, parse_search_path(&path_literal(value))))
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// What a `set_config('search_path' | 'role', ...)` call in a statement
/// does, read from literal arguments; [`Change::Unknown`] for a call whose
/// arguments are not literals (the tableoid check still holds); `None`
/// when there is no such call.
pub(crate) fn set_config_change(text: &str) -> Option<Change> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("set_config")?;
    let rest = lower[at + "set_config".len()..].trim_start();
    let rest_orig = &text[text.len() - rest.len()..];
    let args = rest_orig.strip_prefix('(')?;
    let parsed = (|| {
        let (name, args) = string_literal(args.trim_start())?;
        let args = args.trim_start().strip_prefix(',')?.trim_start();
        let (value, args) = string_literal(args)?;
        let args = args.trim_start().strip_prefix(',')?.trim_start();
        let (flag, args) = args.split_at(args.find(|c: char| !c.is_ascii_alphabetic())?);
        args.trim_start().strip_prefix(')')?;
        let scope = match flag.to_ascii_lowercase().as_str() {
            "true" => Scope::Local,
            "false" => Scope::Session,
            _ => return None,
        };
        Some((name, value, scope))
    })();
    match parsed {
        Some((name, value, scope)) if name.eq_ignore_ascii_case("search_path") => {
            Some(Change::Path(scope, parse_search_path(&value)))
        }
        Some((name, value, scope)) if name.eq_ignore_ascii_case("role") => Some(Change::Role(
            scope,
            (!value.eq_ignore_ascii_case("none")).then_some(value),
        )),
        Some(_) => None,
        // Mentions set_config but not in a form read here: could be anything.
        None => Some(Change::Unknown),
    }
}

/// A `'...'` literal at the start of `s` (doubled quotes unescaped) and the rest.
fn string_literal(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.next_if(|(_, c)| *c == '\'').is_some() {
                out.push('\'');
                continue;
            }
            return Some((out, &body[i + 1..]));
        }
        out.push(c);
    }
    None
}

/// The text after the first `n` words of `text`, trimmed, without a final `;`.
fn after_words(text: &str, n: usize) -> Option<&str> {
    let mut rest = text.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace)?;
        rest = rest[end..].trim_start();
    }
    let rest = rest.trim_end().trim_end_matches(';').trim_end();
    (!rest.is_empty()).then_some(rest)
}

/// The value of `SET ... name TO|= value`.
fn text_after_name<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    // ASCII lower-casing keeps byte offsets.
    let at = text.to_ascii_lowercase().find(name)? + name.len();
    let rest = text.get(at..)?.trim_start();
    let to = rest.get(..2).is_some_and(|w| w.eq_ignore_ascii_case("to"))
        && rest.get(2..).is_some_and(|r| r.starts_with(char::is_whitespace));
    let value = if to { rest.get(2..)? } else { rest.strip_prefix('=')? };
    Some(value.trim().trim_end_matches(';').trim_end())
}

/// A SET value list as a search_path string: `'a', b` -> `a, b`. Quoted
/// literals may hold several schemas (`SET search_path = 'a, b'` is one
/// schema named `a, b` to the server, but that is rare enough and both
/// spellings are what people mean); identifiers keep their quotes.
fn path_literal(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        if let Some((lit, after)) = string_literal(rest) {
            out.push_str(&lit);
            rest = after.trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            out.push_str(rest[..end].trim());
            rest = &rest[end..];
        }
        if let Some(r) = rest.strip_prefix(',') {
            out.push_str(", ");
            rest = r.trim_start();
        } else {
            break;
        }
    }
    out
}

/// A role name as written: quoted identifiers keep their case, string
/// literals are unquoted, bare names fold to lower case.
fn unquote(value: &str) -> String {
    let v = value.trim();
    if let Some((lit, _)) = string_literal(v) {
        return lit;
    }
    if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return inner.replace("\"\"", "\"");
    }
    v.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn set_forms() {
        assert_eq!(
            utility_change("SET search_path TO s2, public"),
            Some(Change::Path(Scope::Session, path(&["s2", "public"])))
        );
        assert_eq!(
            utility_change("set local search_path = 'a', \"B\""),
            Some(Change::Path(Scope::Local, path(&["a", "B"])))
        );
        assert_eq!(
            utility_change("SET SESSION search_path=DEFAULT"),
            Some(Change::PathDefault(Scope::Session))
        );
        assert_eq!(
            utility_change("RESET search_path"),
            Some(Change::PathDefault(Scope::Session))
        );
        assert_eq!(
            utility_change("SET ROLE \"Ann\""),
            Some(Change::Role(Scope::Session, Some("Ann".into())))
        );
        assert_eq!(
            utility_change("SET ROLE NONE"),
            Some(Change::Role(Scope::Session, None))
        );
        assert_eq!(
            utility_change("SET SESSION AUTHORIZATION bob"),
            Some(Change::Authorization(Some("bob".into())))
        );
        assert_eq!(
            utility_change("SET SESSION AUTHORIZATION DEFAULT"),
            Some(Change::Authorization(None))
        );
        assert_eq!(utility_change("DISCARD ALL"), Some(Change::All));
        assert_eq!(utility_change("SET work_mem = '4MB'"), None);
        assert_eq!(utility_change("SET search_path_x = a"), None);
    }

    #[test]
    fn set_config_literals_and_not() {
        assert_eq!(
            set_config_change("SELECT set_config('search_path', 's2, public', false)"),
            Some(Change::Path(Scope::Session, path(&["s2", "public"])))
        );
        assert_eq!(
            set_config_change("select SET_CONFIG ( 'search_path' , '\"$user\"' , TRUE )"),
            Some(Change::Path(Scope::Local, path(&["$user"])))
        );
        assert_eq!(
            set_config_change("SELECT set_config('search_path', $1, false)"),
            Some(Change::Unknown)
        );
        assert_eq!(set_config_change("SELECT set_config('work_mem', '1MB', false)"), None);
        assert_eq!(set_config_change("SELECT 1"), None);
    }

    #[test]
    fn transactions_and_savepoints_undo() {
        let mut p = SearchPath::new(path(&["$user", "public"]), "ann".into());
        assert_eq!(p.schemas(), path(&["ann", "public"]));
        p.apply(&Change::Path(Scope::Session, path(&["s2"])));
        p.end_tx(false);
        assert_eq!(p.schemas(), path(&["ann", "public"]), "rolled back");
        p.apply(&Change::Path(Scope::Local, path(&["s2"])));
        assert_eq!(p.schemas(), path(&["s2"]));
        p.end_tx(true);
        assert_eq!(p.schemas(), path(&["ann", "public"]), "local ends with the transaction");
        p.savepoint("a");
        p.apply(&Change::Path(Scope::Session, path(&["s2"])));
        p.rollback_to("a");
        p.end_tx(true);
        assert_eq!(p.schemas(), path(&["ann", "public"]), "rolled back to the savepoint");
        p.apply(&Change::Role(Scope::Session, Some("s2".into())));
        p.end_tx(true);
        assert_eq!(p.schemas(), path(&["s2", "public"]));
        p.apply(&Change::All);
        p.end_tx(true);
        assert_eq!(p.schemas(), path(&["ann", "public"]));
        p.apply(&Change::Unknown);
        p.end_tx(true);
        assert_eq!(p.certainty(), Certainty::Guessed);
        p.apply(&Change::Path(Scope::Local, path(&["a"])));
        p.end_tx(true);
        assert_eq!(p.certainty(), Certainty::Guessed, "a local SET does not end the guess");
        p.apply(&Change::PathDefault(Scope::Session));
        p.end_tx(true);
        assert_eq!(p.certainty(), Certainty::Known);
    }
}
