//! The AST path: classify a SELECT / WITH / INSERT / UPDATE / DELETE
//! statement from sqlparser's PostgreSQL-dialect AST. Returns `None` when
//! sqlparser cannot parse it (or produces a shape PostgreSQL would not), so
//! the caller falls back to the token path.
//!
//! sqlparser recurses while it parses, and so do the AST walk and the AST's
//! drop, on chains its parser builds in a loop (`1 + 1 + ...` is a
//! left-deep tree). The caller has bounded the depth from the tokens
//! ([`lex::depth_bound`]); a statement past the small inline bound is
//! parsed, walked and dropped on a thread with a deep stack of its own.

use std::ops::ControlFlow;

use sqlparser::ast::{
    ArrayElemTypeDef, AssignmentTarget, BinaryOperator, DataType, Delete, Expr, FromTable, Ident, Insert, ObjectName,
    OnConflictAction, OnInsert, SetExpr, Statement, TableFactor, TableObject, Update, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::lex::{self, normalize_ident, Tok};
use super::{Class, QualName, Refs, UnsafeKind, WriteKind, WriteStmt};

/// Classifies `text` (exactly one statement, whose significant tokens are
/// `toks`) from its AST, or `None` if sqlparser cannot parse it. Deep
/// statements are classified on a thread with [`lex::DEEP_STACK`] of
/// stack; if that thread cannot be started, the statement is
/// [`UnsafeKind::TooComplex`].
pub(crate) fn classify_ast(text: &str, toks: &[Tok]) -> Option<Class> {
    if lex::depth_bound(toks) <= lex::INLINE_DEPTH {
        return classify_ast_here(text, toks);
    }
    let too_complex = Some(Class::Unsafe(UnsafeKind::TooComplex));
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("switchyard-classify".into())
            .stack_size(lex::DEEP_STACK)
            .spawn_scoped(scope, || classify_ast_here(text, toks));
        match worker {
            // The AST is built, walked and dropped on that thread; only the
            // (shallow) classification comes back.
            Ok(handle) => handle.join().unwrap_or(too_complex.clone()),
            Err(_) => too_complex.clone(),
        }
    })
}

/// [`classify_ast`] on the current thread's stack.
fn classify_ast_here(text: &str, toks: &[Tok]) -> Option<Class> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, text).ok()?;
    if stmts.len() != 1 {
        return None;
    }
    let stmt = stmts.pop()?;
    let mut facts = Facts::default();
    let _ = stmt.visit(&mut facts);
    let splice_at = toks.last()?.end;
    let write = |s: &Statement, facts: Facts| {
        if facts.writes != 1 {
            return Some(Class::Unsafe(UnsafeKind::WriteInCte));
        }
        write_stmt(s, splice_at, facts.functions, facts.refs).map(Class::Write)
    };
    match &stmt {
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => write(&stmt, facts),
        Statement::Merge(_) => Some(Class::Unsafe(UnsafeKind::Merge)),
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => write(s, facts),
            SetExpr::Merge(_) => Some(Class::Unsafe(UnsafeKind::Merge)),
            body => Some(if facts.writes > 0 {
                Class::Unsafe(UnsafeKind::WriteInCte)
            } else if has_into(body) {
                Class::Unsafe(UnsafeKind::SelectInto)
            } else {
                Class::Read {
                    functions: facts.functions,
                    refs: facts.refs,
                }
            }),
        },
        _ => None,
    }
}

/// What a walk over the whole AST finds: nested data-modifying statements
/// (the statement itself counts as one), called functions, and the
/// relations, operators and types that can call functions unnamed.
#[derive(Default)]
struct Facts {
    writes: usize,
    functions: Vec<QualName>,
    refs: Refs,
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

impl Facts {
    fn add_function(&mut self, name: &ObjectName) {
        if let Some(n) = qualname(name) {
            push_new(&mut self.functions, n);
        }
    }

    /// An operator symbol as `pg_operator.oprname` spells it. Standard
    /// symbols count too: a user may define `+` or `=` for their own types.
    fn add_operator(&mut self, symbol: String) {
        push_new(&mut self.refs.operators, symbol);
    }

    fn add_binary_operator(&mut self, op: &BinaryOperator) {
        match op {
            // OPERATOR(schema.sym): the symbol is the last part.
            BinaryOperator::PGCustomBinaryOperator(parts) => {
                if let Some(sym) = parts.last() {
                    self.add_operator(sym.clone());
                }
            }
            op => self.add_operator(op.to_string()),
        }
    }

    /// A user type in a cast; built-in types are spelled as keywords
    /// (`DataType::Int` ...) and need no lookup.
    fn add_type(&mut self, t: &DataType) {
        match t {
            DataType::Custom(name, _) => {
                if let Some(n) = qualname(name) {
                    push_new(&mut self.refs.types, n);
                }
            }
            DataType::Array(
                ArrayElemTypeDef::AngleBracket(inner)
                | ArrayElemTypeDef::SquareBracket(inner, _)
                | ArrayElemTypeDef::Parenthesis(inner)
                | ArrayElemTypeDef::Qualified(inner, _),
            ) => self.add_type(inner),
            _ => {}
        }
    }

    /// The relations of `TABLE name` commands in a set expression (nested
    /// queries are visited on their own).
    fn add_table_commands(&mut self, body: &SetExpr) {
        let part = |p: &str| match p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
            Some(quoted) => normalize_ident(&quoted.replace("\"\"", "\""), true),
            None => normalize_ident(p, false),
        };
        match body {
            SetExpr::Table(t) => {
                if let Some(name) = &t.table_name {
                    let n = match &t.schema_name {
                        Some(s) => QualName::qualified(&part(s), &part(name)),
                        None => QualName::bare(&part(name)),
                    };
                    push_new(&mut self.refs.relations, n);
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.add_table_commands(left);
                self.add_table_commands(right);
            }
            _ => {}
        }
    }

    /// The operators and types an expression node uses itself (children
    /// are visited on their own).
    fn add_expr_refs(&mut self, e: &Expr) {
        match e {
            Expr::BinaryOp { op, .. } => self.add_binary_operator(op),
            Expr::AnyOp { compare_op, .. } | Expr::AllOp { compare_op, .. } => self.add_binary_operator(compare_op),
            Expr::UnaryOp { op, .. } => self.add_operator(op.to_string()),
            // IN and BETWEEN compare with the type's `=`, `>=` and `<=`;
            // LIKE is `~~` and ILIKE `~~*`.
            Expr::InList { .. } | Expr::InSubquery { .. } | Expr::InUnnest { .. } => self.add_operator("=".into()),
            Expr::Between { .. } => {
                self.add_operator(">=".into());
                self.add_operator("<=".into());
            }
            Expr::Like { .. } => self.add_operator("~~".into()),
            Expr::ILike { .. } => self.add_operator("~~*".into()),
            Expr::Cast { data_type, .. } => self.add_type(data_type),
            Expr::TypedString(ts) => self.add_type(&ts.data_type),
            _ => {}
        }
    }
}

impl Visitor for Facts {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if matches!(
            s,
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_)
        ) {
            self.writes += 1;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.add_function(&f.name);
        }
        self.add_expr_refs(e);
        ControlFlow::Continue(())
    }

    // `TABLE name` carries its name as plain strings, not a relation.
    fn pre_visit_query(&mut self, q: &sqlparser::ast::Query) -> ControlFlow<()> {
        self.add_table_commands(&q.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        if let Some(n) = qualname(r) {
            push_new(&mut self.refs.relations, n);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table {
                name, args: Some(_), ..
            } => self.add_function(name),
            TableFactor::Function { name, .. } => self.add_function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// SELECT ... INTO anywhere in the top-level set expression.
fn has_into(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(s) => s.into.is_some(),
        SetExpr::Query(q) => has_into(&q.body),
        SetExpr::SetOperation { left, right, .. } => has_into(left) || has_into(right),
        _ => false,
    }
}

fn ident(i: &Ident) -> String {
    normalize_ident(&i.value, i.quote_style.is_some())
}

/// `name`, `schema.name` or `catalog.schema.name`, normalized.
fn qualname(name: &ObjectName) -> Option<QualName> {
    let parts: Vec<String> = name.0.iter().map(|p| p.as_ident().map(ident)).collect::<Option<_>>()?;
    match parts.as_slice() {
        [n] => Some(QualName::bare(n)),
        [s, n] | [_, s, n] => Some(QualName::qualified(s, n)),
        _ => None,
    }
}

/// Column names assigned by SET items. PostgreSQL does not allow a table
/// prefix on a SET target, so in `a.b = ...` the column is `a` (and `.b`
/// a field of a composite column).
fn assigned(assignments: &[sqlparser::ast::Assignment]) -> Vec<String> {
    let first = |n: &ObjectName| n.0.first().and_then(|p| p.as_ident()).map(ident);
    assignments
        .iter()
        .flat_map(|a| match &a.target {
            AssignmentTarget::ColumnName(n) => first(n).into_iter().collect::<Vec<_>>(),
            AssignmentTarget::Tuple(ns) => ns.iter().filter_map(first).collect(),
        })
        .collect()
}

/// The capture facts of an INSERT / UPDATE / DELETE statement node.
fn write_stmt(s: &Statement, splice_at: usize, functions: Vec<QualName>, refs: Refs) -> Option<WriteStmt> {
    let base = |kind, table, alias, returning: bool| WriteStmt {
        kind,
        table,
        alias,
        has_returning: returning,
        splice_at,
        on_conflict: false,
        assigned_columns: Vec::new(),
        functions: functions.clone(),
        refs: refs.clone(),
    };
    match s {
        Statement::Insert(Insert {
            table: TableObject::TableName(name),
            table_alias,
            returning,
            on,
            ..
        }) => {
            let mut w = base(
                WriteKind::Insert,
                qualname(name)?,
                table_alias.as_ref().map(|a| ident(&a.alias)),
                returning.is_some(),
            );
            if let Some(OnInsert::OnConflict(oc)) = on {
                w.on_conflict = true;
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    w.assigned_columns = assigned(&du.assignments);
                }
            } else if on.is_some() {
                return None;
            }
            Some(w)
        }
        Statement::Update(Update {
            table,
            assignments,
            returning,
            ..
        }) => {
            let TableFactor::Table { name, alias, .. } = &table.relation else {
                return None;
            };
            if !table.joins.is_empty() {
                return None;
            }
            let mut w = base(
                WriteKind::Update,
                qualname(name)?,
                alias.as_ref().map(|a| ident(&a.name)),
                returning.is_some(),
            );
            w.assigned_columns = assigned(assignments);
            Some(w)
        }
        Statement::Delete(Delete {
            tables,
            from: FromTable::WithFromKeyword(from),
            returning,
            ..
        }) if tables.is_empty() && from.len() == 1 && from[0].joins.is_empty() => {
            let TableFactor::Table { name, alias, .. } = &from[0].relation else {
                return None;
            };
            Some(base(
                WriteKind::Delete,
                qualname(name)?,
                alias.as_ref().map(|a| ident(&a.name)),
                returning.is_some(),
            ))
        }
        _ => None,
    }
}
