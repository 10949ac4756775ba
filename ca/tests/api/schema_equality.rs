//! The twin migration sets, `migrations/sqlite/` and `migrations/postgres/`, must describe one
//! schema. The store sends the same SQL to both backends (see `ca/src/store/mod.rs`), so a
//! column, index, foreign key or trigger that exists on one backend only is a bug that only
//! the deployments on that backend would meet. Every migration says "keep in step with the
//! other backend"; nothing else checks it, and this test does.
//!
//! Each set is applied the way the server applies it, by opening a `Registry` (a fresh
//! temporary SQLite file; a fresh PostgreSQL database). Each catalogue is then read back
//! (`sqlite_master` and the `pragma_*` functions; `pg_catalog`) and normalised into facts,
//! each a readable key ("column devices.zone") and value, and the two sets of facts must be
//! equal. The failure message lists what exists on one backend only and what differs.
//! Compared:
//!
//! - tables and views, by name (sqlx's `_sqlx_migrations` and SQLite's own `sqlite_*`
//!   objects are not part of the schema);
//! - columns: position, type in a common vocabulary (see [`common_type`]), NOT NULL, whether
//!   there is a default, position in the primary key, and whether the database generates the
//!   value (SQLite `AUTOINCREMENT`; a PostgreSQL identity or `serial` column);
//! - indexes: name, table, columns in order, unique, partial (has a WHERE). An index that
//!   backs a UNIQUE constraint is compared by table and columns, its name being made up by
//!   each database; primary-key indexes are skipped, primary-key membership being compared
//!   on the columns;
//! - foreign keys: table, columns, referenced table and columns, ON UPDATE and ON DELETE;
//! - triggers (not PostgreSQL's internal ones): table, timing, event, level, and how many.
//!   Not their names: a SQLite trigger has one event, so an append-only table has a
//!   `_no_update` and a `_no_delete` trigger on SQLite and one `_no_change` trigger for both
//!   events on PostgreSQL.
//!
//! Normalised: a primary-key column counts as NOT NULL on both backends (PostgreSQL enforces
//! it; SQLite, for historical reasons, lets a primary key that is not `INTEGER` hold NULL
//! unless it is also declared NOT NULL).
//!
//! Not compared: CHECK constraints, default values (only whether there is one), trigger
//! bodies and the PostgreSQL functions they call, integer widths (see [`common_type`]),
//! index sort orders and collations, and the rows the migrations insert.
//!
//! The other tests show that the check can fail: a column or an index added to one backend
//! only is reported, and nothing else is.

use crate::support::{fresh_postgres_database, Db};
use sqlx::{Connection, PgConnection, SqliteConnection};
use std::collections::BTreeMap;
use std::fmt;
use tempfile::TempDir;
use vouch_ca::store::Registry;

/// Maps a column type as a backend reports it to the vocabulary both backends share, or
/// refuses a type it does not know: a new type in a migration must be added here, with its
/// counterpart on the other backend, rather than pass unexamined.
///
/// The mapping is the one the migrations use:
///
/// | common    | SQLite (declared)   | PostgreSQL (`format_type`) |
/// |-----------|---------------------|----------------------------|
/// | `integer` | `INTEGER`, `BIGINT` | `bigint`, `integer`        |
/// | `text`    | `TEXT`              | `text`                     |
/// | `bytes`   | `BLOB`              | `bytea`                    |
///
/// Times are Unix seconds in `BIGINT` columns, and JSON is `TEXT`, so there is no time or
/// JSON type. Integer widths are not compared: SQLite stores every integer in up to 8 bytes,
/// and a generated key must be declared `INTEGER` there (to alias the rowid) while it is a
/// `BIGINT` identity on PostgreSQL.
fn common_type(db: Db, reported: &str) -> Result<&'static str, String> {
    let lower = reported.trim().to_ascii_lowercase();
    match (db, lower.as_str()) {
        (Db::Sqlite, "integer" | "bigint") | (Db::Postgres, "bigint" | "integer") => Ok("integer"),
        (Db::Sqlite, "text") | (Db::Postgres, "text") => Ok("text"),
        (Db::Sqlite, "blob") | (Db::Postgres, "bytea") => Ok("bytes"),
        _ => Err(format!(
            "{db:?} column type `{reported}` has no mapping in schema_equality::common_type: \
             add it there together with the type the other backend uses for it"
        )),
    }
}

/// A column, normalised (see the module documentation).
struct Column<'a> {
    table: &'a str,
    name: &'a str,
    /// 1-based, among the table's live columns.
    position: usize,
    /// In the vocabulary of [`common_type`].
    ty: &'static str,
    not_null: bool,
    has_default: bool,
    /// 1-based position in the primary key, if the column is part of it.
    primary_key: Option<i64>,
    /// The database makes the value (SQLite `AUTOINCREMENT`, PostgreSQL identity/`serial`).
    generated: bool,
}

/// One backend's schema as facts: a readable key naming a table, column, index, foreign key
/// or trigger group, and a readable description that must be the same on both backends.
#[derive(Debug, Default)]
struct Schema {
    facts: BTreeMap<String, String>,
}

impl Schema {
    /// Records a fact; a second fact under the same key (two UNIQUE constraints on the same
    /// columns, say) is kept beside the first, so that it too is compared.
    fn add(&mut self, key: String, value: String) {
        self.facts
            .entry(key)
            .and_modify(|v| {
                v.push_str(" + ");
                v.push_str(&value);
            })
            .or_insert(value);
    }

    /// Records a table or a view.
    fn table(&mut self, name: &str, kind: &str) {
        self.add(format!("table {name}"), kind.to_owned());
    }

    /// Records a column.
    fn column(&mut self, c: &Column<'_>) {
        let mut value = format!(
            "position {}, {}, {}, {}",
            c.position,
            c.ty,
            // See the module documentation: PostgreSQL makes every primary-key column NOT NULL.
            if c.not_null || c.primary_key.is_some() {
                "NOT NULL"
            } else {
                "nullable"
            },
            if c.has_default {
                "has a default"
            } else {
                "no default"
            }
        );
        if let Some(n) = c.primary_key {
            value.push_str(&format!(", primary key column {n}"));
        }
        if c.generated {
            value.push_str(", generated");
        }
        self.add(format!("column {}.{}", c.table, c.name), value);
    }

    /// Records an index made by CREATE INDEX.
    fn index(&mut self, name: &str, table: &str, columns: &[String], unique: bool, partial: bool) {
        let mut value = format!("on {table} ({})", columns.join(", "));
        if unique {
            value.push_str(", unique");
        }
        if partial {
            value.push_str(", partial");
        }
        self.add(format!("index {name}"), value);
    }

    /// Records the index of a UNIQUE constraint (named by each database as it likes).
    fn unique_constraint(&mut self, table: &str, columns: &[String]) {
        self.add(
            format!("unique constraint on {table} ({})", columns.join(", ")),
            "present".to_owned(),
        );
    }

    /// Records a foreign key.
    fn foreign_key(&mut self, fk: &ForeignKey) {
        self.add(
            format!("foreign key {} ({})", fk.table, fk.columns.join(", ")),
            format!(
                "references {} ({}), on update {}, on delete {}",
                fk.references,
                fk.referenced_columns.join(", "),
                fk.on_update,
                fk.on_delete
            ),
        );
    }

    /// Records the triggers, counted by table, timing, event and level.
    fn triggers(
        &mut self,
        counts: BTreeMap<(String, &'static str, &'static str, &'static str), usize>,
    ) {
        for ((table, timing, event, level), n) in counts {
            self.add(
                format!("triggers on {table} {timing} {event} for each {level}"),
                format!("{n} trigger(s)"),
            );
        }
    }
}

/// A foreign key, normalised.
struct ForeignKey {
    table: String,
    columns: Vec<String>,
    references: String,
    referenced_columns: Vec<String>,
    /// `NO ACTION`, `RESTRICT`, `CASCADE`, `SET NULL` or `SET DEFAULT`.
    on_update: String,
    on_delete: String,
}

/// A fact on which the two backends disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Difference {
    /// The fact exists on one backend only.
    OnlyIn { db: Db, fact: String, value: String },
    /// The fact exists on both, with different values.
    Differs {
        fact: String,
        sqlite: String,
        postgres: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::OnlyIn { db, fact, value } => {
                write!(f, "only on {db:?}: {fact}: {value}")
            }
            Difference::Differs {
                fact,
                sqlite,
                postgres,
            } => write!(
                f,
                "differs: {fact}\n      Sqlite:   {sqlite}\n      Postgres: {postgres}"
            ),
        }
    }
}

/// Every fact on which the two schemas disagree, in key order.
fn compare(sqlite: &Schema, postgres: &Schema) -> Vec<Difference> {
    let mut out = Vec::new();
    for (fact, s) in &sqlite.facts {
        match postgres.facts.get(fact) {
            None => out.push(Difference::OnlyIn {
                db: Db::Sqlite,
                fact: fact.clone(),
                value: s.clone(),
            }),
            Some(p) if p != s => out.push(Difference::Differs {
                fact: fact.clone(),
                sqlite: s.clone(),
                postgres: p.clone(),
            }),
            Some(_) => {}
        }
    }
    for (fact, p) in &postgres.facts {
        if !sqlite.facts.contains_key(fact) {
            out.push(Difference::OnlyIn {
                db: Db::Postgres,
                fact: fact.clone(),
                value: p.clone(),
            });
        }
    }
    out.sort_by(|a, b| fact_of(a).cmp(fact_of(b)));
    out
}

/// The key a difference is about.
fn fact_of(d: &Difference) -> &str {
    match d {
        Difference::OnlyIn { fact, .. } | Difference::Differs { fact, .. } => fact,
    }
}

/// The failure message: every difference, one per line.
fn report(differences: &[Difference]) -> String {
    let mut s = format!(
        "migrations/sqlite and migrations/postgres give different schemas ({} difference(s)):\n",
        differences.len()
    );
    for d in differences {
        s.push_str(&format!("  - {d}\n"));
    }
    s
}

/// A fresh SQLite file migrated by opening a `Registry` on it (the server's code path), and a
/// plain connection to it for reading the catalogue. The directory holds the file.
async fn migrated_sqlite() -> (TempDir, SqliteConnection) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("vouch.db").display()
    );
    let registry = Registry::connect(&url, 2).await.unwrap();
    registry.close().await;
    let conn = SqliteConnection::connect(&url).await.unwrap();
    (dir, conn)
}

/// A fresh PostgreSQL database migrated by opening a `Registry` on it (the server's code
/// path), and a plain connection to it for reading the catalogue.
async fn migrated_postgres() -> PgConnection {
    let url = fresh_postgres_database().await;
    let registry = Registry::connect(&url, 2).await.unwrap();
    registry.close().await;
    PgConnection::connect(&url).await.unwrap()
}

/// The SQLite schema, from `sqlite_master` and the `pragma_*` table-valued functions.
async fn sqlite_schema(conn: &mut SqliteConnection) -> Schema {
    let mut schema = Schema::default();
    let objects: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT type, name, COALESCE(sql, '') FROM sqlite_master \
         WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (kind, table, sql) in &objects {
        schema.table(table, kind);
        if kind != "table" {
            continue;
        }

        let columns: Vec<(String, String, i64, Option<String>, i64)> = sqlx::query_as(
            "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        // AUTOINCREMENT is allowed only on a one-column INTEGER PRIMARY KEY.
        let autoincrement = sql.to_ascii_uppercase().contains("AUTOINCREMENT");
        let pk_columns = columns.iter().filter(|c| c.4 > 0).count();
        for (i, (name, declared, not_null, default, pk)) in columns.iter().enumerate() {
            let ty = common_type(Db::Sqlite, declared)
                .unwrap_or_else(|e| panic!("column {table}.{name}: {e}"));
            schema.column(&Column {
                table,
                name,
                position: i + 1,
                ty,
                not_null: *not_null != 0,
                has_default: default.is_some(),
                primary_key: (*pk > 0).then_some(*pk),
                generated: autoincrement
                    && *pk == 1
                    && pk_columns == 1
                    && declared.eq_ignore_ascii_case("INTEGER"),
            });
        }

        let indexes: Vec<(String, i64, String, i64)> = sqlx::query_as(
            "SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1) ORDER BY name",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        for (index, unique, origin, partial) in &indexes {
            if origin == "pk" {
                continue;
            }
            let index_columns: Vec<(Option<String>,)> =
                sqlx::query_as("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(index)
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
            let index_columns: Vec<String> = index_columns
                .into_iter()
                .map(|(c,)| c.unwrap_or_else(|| "<expression>".to_owned()))
                .collect();
            if origin == "u" {
                schema.unique_constraint(table, &index_columns);
            } else {
                schema.index(index, table, &index_columns, *unique != 0, *partial != 0);
            }
        }

        let fk_rows: Vec<(i64, String, String, Option<String>, String, String)> = sqlx::query_as(
            "SELECT id, \"table\", \"from\", \"to\", on_update, on_delete \
             FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let mut fks: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for (id, parent, from, to, on_update, on_delete) in fk_rows {
            let fk = fks.entry(id).or_insert_with(|| ForeignKey {
                table: table.clone(),
                columns: Vec::new(),
                references: parent.clone(),
                referenced_columns: Vec::new(),
                on_update,
                on_delete,
            });
            fk.columns.push(from);
            if let Some(to) = to {
                fk.referenced_columns.push(to);
            }
        }
        for fk in fks.values_mut() {
            // `REFERENCES parent` without columns names the parent's primary key.
            if fk.referenced_columns.is_empty() {
                let pk: Vec<(String,)> = sqlx::query_as(
                    "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk",
                )
                .bind(&fk.references)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
                fk.referenced_columns = pk.into_iter().map(|(c,)| c).collect();
            }
            schema.foreign_key(fk);
        }
    }

    let triggers: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut counts = BTreeMap::new();
    for (name, table, sql) in triggers {
        let (timing, event) = sqlite_trigger_kind(&sql)
            .unwrap_or_else(|| panic!("cannot read the timing and event of trigger {name}: {sql}"));
        // SQLite has row-level triggers only.
        *counts.entry((table, timing, event, "row")).or_insert(0) += 1;
    }
    schema.triggers(counts);
    schema
}

/// The timing (`BEFORE`, `AFTER`, `INSTEAD OF`) and event (`INSERT`, `UPDATE`, `DELETE`) of a
/// SQLite trigger, from its `CREATE TRIGGER` statement (SQLite keeps no other record of them).
/// The columns of `UPDATE OF` are not read.
fn sqlite_trigger_kind(sql: &str) -> Option<(&'static str, &'static str)> {
    let upper = sql.to_ascii_uppercase();
    let tokens: Vec<&str> = upper.split_whitespace().collect();
    // The trigger's name follows TRIGGER (or TRIGGER IF NOT EXISTS); the event comes after.
    let start = tokens.iter().position(|t| *t == "TRIGGER")? + 2;
    let mut timing = "BEFORE"; // SQLite's default.
    for token in tokens.get(start..)? {
        match *token {
            "BEFORE" => timing = "BEFORE",
            "AFTER" => timing = "AFTER",
            "INSTEAD" => timing = "INSTEAD OF",
            "INSERT" => return Some((timing, "INSERT")),
            "UPDATE" => return Some((timing, "UPDATE")),
            "DELETE" => return Some((timing, "DELETE")),
            _ => {}
        }
    }
    None
}

/// The name PostgreSQL's `pg_constraint` gives a foreign key's referential action.
fn pg_fk_action(code: &str) -> String {
    match code {
        "a" => "NO ACTION",
        "r" => "RESTRICT",
        "c" => "CASCADE",
        "n" => "SET NULL",
        "d" => "SET DEFAULT",
        other => panic!("unknown foreign key action code {other:?} in pg_constraint"),
    }
    .to_owned()
}

/// A row of the PostgreSQL column query: name, `format_type`, NOT NULL, default expression,
/// `attidentity` (empty unless an identity column), position in the primary key.
type PgColumnRow = (String, String, bool, Option<String>, String, Option<i64>);

/// A row of the PostgreSQL index query: index, table, unique, partial, kind of the
/// constraint it backs (empty for CREATE INDEX), key columns in order.
type PgIndexRow = (String, String, bool, bool, String, Vec<String>);

/// A row of the PostgreSQL foreign-key query: table, referenced table, columns, referenced
/// columns, ON UPDATE and ON DELETE action codes.
type PgForeignKeyRow = (String, String, Vec<String>, Vec<String>, String, String);

/// The PostgreSQL schema (the connection's current schema), from `pg_catalog`.
async fn postgres_schema(conn: &mut PgConnection) -> Schema {
    let mut schema = Schema::default();
    let objects: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm') \
         AND c.relname <> '_sqlx_migrations' ORDER BY c.relname",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (table, kind) in &objects {
        schema.table(table, kind);
        if kind != "table" {
            continue;
        }
        let columns: Vec<PgColumnRow> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                        pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, \
                        (SELECT k.ord FROM pg_constraint con, \
                                unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) \
                          WHERE con.conrelid = c.oid AND con.contype = 'p' \
                            AND k.attnum = a.attnum) \
                 FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE n.nspname = current_schema() AND c.relname = $1 \
                   AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        for (i, (name, reported, not_null, default, identity, pk)) in columns.iter().enumerate() {
            let ty = common_type(Db::Postgres, reported)
                .unwrap_or_else(|e| panic!("column {table}.{name}: {e}"));
            // A `serial` column's default is its sequence; an identity column has none.
            let serial = default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("));
            schema.column(&Column {
                table,
                name,
                position: i + 1,
                ty,
                not_null: *not_null,
                has_default: default.is_some() && !serial,
                primary_key: *pk,
                generated: !identity.is_empty() || serial,
            });
        }
    }

    // Indexes, with the kind of constraint each backs ('p', 'u', 'x'; '' for CREATE INDEX).
    let indexes: Vec<PgIndexRow> = sqlx::query_as(
        "SELECT ic.relname::text, t.relname::text, i.indisunique, i.indpred IS NOT NULL, \
                COALESCE((SELECT con.contype::text FROM pg_constraint con \
                           WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid \
                             AND con.contype IN ('p', 'u', 'x') LIMIT 1), ''), \
                ARRAY(SELECT COALESCE(a.attname::text, '<expression>') \
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                        LEFT JOIN pg_attribute a \
                          ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum > 0 \
                       WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) \
         FROM pg_index i \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = current_schema() AND t.relname <> '_sqlx_migrations' \
         ORDER BY ic.relname",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (index, table, unique, partial, constraint, columns) in &indexes {
        match constraint.as_str() {
            "p" => {}
            "u" => schema.unique_constraint(table, columns),
            "" => schema.index(index, table, columns, *unique, *partial),
            other => panic!("index {index} backs a constraint of kind {other:?}, not compared"),
        }
    }

    let fks: Vec<PgForeignKeyRow> = sqlx::query_as(
        "SELECT t.relname::text, r.relname::text, \
                ARRAY(SELECT a.attname::text \
                        FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) \
                        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum \
                       ORDER BY k.ord), \
                ARRAY(SELECT a.attname::text \
                        FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord) \
                        JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum \
                       ORDER BY k.ord), \
                con.confupdtype::text, con.confdeltype::text \
         FROM pg_constraint con \
         JOIN pg_class t ON t.oid = con.conrelid \
         JOIN pg_class r ON r.oid = con.confrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE con.contype = 'f' AND n.nspname = current_schema()",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (table, references, columns, referenced_columns, on_update, on_delete) in fks {
        schema.foreign_key(&ForeignKey {
            table,
            columns,
            references,
            referenced_columns,
            on_update: pg_fk_action(&on_update),
            on_delete: pg_fk_action(&on_delete),
        });
    }

    // User triggers; the internal ones enforce foreign keys. `tgtype` bits (PostgreSQL's
    // `pg_trigger.h`): 1 row, 2 before, 4 insert, 8 delete, 16 update, 32 truncate,
    // 64 instead.
    let triggers: Vec<(String, String, i16)> = sqlx::query_as(
        "SELECT tg.tgname::text, t.relname::text, tg.tgtype \
         FROM pg_trigger tg \
         JOIN pg_class t ON t.oid = tg.tgrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE NOT tg.tgisinternal AND n.nspname = current_schema() \
         ORDER BY tg.tgname",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut counts = BTreeMap::new();
    for (_name, table, tgtype) in triggers {
        let level = if tgtype & 1 != 0 { "row" } else { "statement" };
        let timing = if tgtype & 2 != 0 {
            "BEFORE"
        } else if tgtype & 64 != 0 {
            "INSTEAD OF"
        } else {
            "AFTER"
        };
        for (bit, event) in [
            (4, "INSERT"),
            (8, "DELETE"),
            (16, "UPDATE"),
            (32, "TRUNCATE"),
        ] {
            if tgtype & bit != 0 {
                *counts
                    .entry((table.clone(), timing, event, level))
                    .or_insert(0) += 1;
            }
        }
    }
    schema.triggers(counts);
    schema
}

/// Both backends, migrated.
struct Migrated {
    _dir: TempDir,
    sqlite: SqliteConnection,
    postgres: PgConnection,
}

impl Migrated {
    async fn new() -> Self {
        let (dir, sqlite) = migrated_sqlite().await;
        let postgres = migrated_postgres().await;
        Self {
            _dir: dir,
            sqlite,
            postgres,
        }
    }

    /// Runs `sql` (a schema change) on the `db` backend only.
    async fn execute_on(&mut self, db: Db, sql: &str) {
        match db {
            Db::Sqlite => {
                sqlx::query(sql).execute(&mut self.sqlite).await.unwrap();
            }
            Db::Postgres => {
                sqlx::query(sql).execute(&mut self.postgres).await.unwrap();
            }
        }
    }

    /// Checks that the differences between the two schemas are now exactly `expected`.
    async fn assert_differences(&mut self, expected: Vec<Difference>) {
        let differences = self.differences().await;
        assert_eq!(differences, expected, "{}", report(&differences));
    }

    /// The differences between the two schemas as they are now.
    async fn differences(&mut self) -> Vec<Difference> {
        let sqlite = sqlite_schema(&mut self.sqlite).await;
        let postgres = postgres_schema(&mut self.postgres).await;
        compare(&sqlite, &postgres)
    }
}

#[tokio::test]
async fn sqlite_and_postgres_migrations_give_the_same_schema() {
    let mut db = Migrated::new().await;
    let sqlite = sqlite_schema(&mut db.sqlite).await;
    let postgres = postgres_schema(&mut db.postgres).await;

    // The introspection found the schema (two empty descriptions would compare equal).
    for fact in [
        "table devices",
        "column devices.id",
        "column audit_log.id",
        "index certificates_revoked",
        "unique constraint on devices (spiffe_id)",
        "foreign key certificates (device_id)",
        "triggers on audit_log BEFORE UPDATE for each row",
    ] {
        assert!(
            sqlite.facts.contains_key(fact),
            "SQLite schema lacks {fact}"
        );
    }
    assert!(sqlite.facts.len() > 100, "{:#?}", sqlite.facts);

    let differences = compare(&sqlite, &postgres);
    assert!(differences.is_empty(), "{}", report(&differences));
}

#[tokio::test]
async fn a_column_on_one_backend_only_is_reported() {
    let mut db = Migrated::new().await;
    assert_eq!(db.differences().await, vec![]);

    db.execute_on(Db::Sqlite, "ALTER TABLE devices ADD COLUMN extra TEXT")
        .await;
    db.assert_differences(vec![Difference::OnlyIn {
        db: Db::Sqlite,
        fact: "column devices.extra".into(),
        value: "position 20, text, nullable, no default".into(),
    }])
    .await;

    // The same column on PostgreSQL, but NOT NULL with a default: reported as differing.
    db.execute_on(
        Db::Postgres,
        "ALTER TABLE devices ADD COLUMN extra TEXT NOT NULL DEFAULT ''",
    )
    .await;
    db.assert_differences(vec![Difference::Differs {
        fact: "column devices.extra".into(),
        sqlite: "position 20, text, nullable, no default".into(),
        postgres: "position 20, text, NOT NULL, has a default".into(),
    }])
    .await;
}

#[tokio::test]
async fn an_index_on_one_backend_only_is_reported() {
    let mut db = Migrated::new().await;
    db.execute_on(
        Db::Postgres,
        "CREATE INDEX devices_extra ON devices (zone, status)",
    )
    .await;
    // Same name on both, different columns and partial on one side only.
    db.execute_on(
        Db::Sqlite,
        "CREATE INDEX certificates_extra ON certificates (not_after)",
    )
    .await;
    db.execute_on(
        Db::Postgres,
        "CREATE INDEX certificates_extra ON certificates (not_before) WHERE revoked_at IS NULL",
    )
    .await;
    db.assert_differences(vec![
        Difference::Differs {
            fact: "index certificates_extra".into(),
            sqlite: "on certificates (not_after)".into(),
            postgres: "on certificates (not_before), partial".into(),
        },
        Difference::OnlyIn {
            db: Db::Postgres,
            fact: "index devices_extra".into(),
            value: "on devices (zone, status)".into(),
        },
    ])
    .await;
}

#[test]
fn an_unknown_column_type_is_refused() {
    assert_eq!(common_type(Db::Sqlite, "BIGINT"), Ok("integer"));
    assert_eq!(common_type(Db::Postgres, "bytea"), Ok("bytes"));
    let refused = common_type(Db::Postgres, "timestamp with time zone").unwrap_err();
    assert!(refused.contains("`timestamp with time zone`"), "{refused}");
    assert!(common_type(Db::Sqlite, "VARCHAR(64)").is_err());
    assert!(common_type(Db::Sqlite, "").is_err());
}
