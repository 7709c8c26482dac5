//! One test per kind of migration, each through `run`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_column_with_default() -> Result<()> {
    run(Scenario {
        seed: 1,
        schema: "CREATE TABLE note (id int PRIMARY KEY, body text, hits int NOT NULL DEFAULT 0)",
        rows: "INSERT INTO note SELECT g, 'seed ' || g, g FROM generate_series(1, 100) g",
        migration: "ALTER TABLE note ADD COLUMN x text DEFAULT 'd'",
        mapping: "",
        needs_mapping: None,
        load: |r| {
            let i = id(r, 200);
            match r.random_range(0..4) {
                0 => {
                    format!("INSERT INTO note VALUES ({i}, 'b{i}') ON CONFLICT (id) DO UPDATE SET hits = note.hits + 1")
                }
                1 => format!("UPDATE note SET body = body || '.' WHERE id = {i}"),
                2 => format!("DELETE FROM note WHERE id = {i}"),
                _ => format!("UPDATE note SET hits = hits + 1 WHERE id BETWEEN {i} AND {i} + 5"),
            }
        },
        compare: &[(
            "SELECT id, body, hits, 'd' FROM note ORDER BY id",
            "SELECT id, body, hits, x FROM note ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_columns() -> Result<()> {
    // The key column is renamed too: deletes must find rows by the new name.
    run(Scenario {
        seed: 2,
        schema: "CREATE TABLE item (id int PRIMARY KEY, qty int, label text)",
        rows: "INSERT INTO item SELECT g, g % 7, 'l' || g FROM generate_series(1, 100) g",
        migration: "ALTER TABLE item RENAME COLUMN id TO item_id; ALTER TABLE item RENAME COLUMN qty TO quantity",
        mapping: r#"
            [tables.item.columns]
            item_id = "id"
            quantity = "qty"
        "#,
        needs_mapping: Some("column id"),
        load: |r| {
            let i = id(r, 200);
            match r.random_range(0..4) {
                0 => format!("INSERT INTO item VALUES ({i}, 1, 'n') ON CONFLICT (id) DO UPDATE SET qty = item.qty + 1"),
                1 => format!("UPDATE item SET label = label || 'x', qty = qty * 2 WHERE id = {i}"),
                2 => format!("DELETE FROM item WHERE id = {i}"),
                _ => format!("UPDATE item SET qty = NULL WHERE id = {i}"),
            }
        },
        compare: &[(
            "SELECT id, qty, label FROM item ORDER BY id",
            "SELECT item_id, quantity, label FROM item ORDER BY item_id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int_to_bigint() -> Result<()> {
    // Keys and a foreign key change type as well as plain columns.
    run(Scenario {
        seed: 3,
        schema: "
            CREATE TABLE counter (id int PRIMARY KEY, hits int NOT NULL DEFAULT 0, total int);
            CREATE TABLE sample (counter int REFERENCES counter ON DELETE CASCADE, n int, v int,
                PRIMARY KEY (counter, n));
        ",
        rows: "
            INSERT INTO counter SELECT g, g, 2147483000 + g FROM generate_series(1, 80) g;
            INSERT INTO sample SELECT g % 80 + 1, g, -2147483000 - g FROM generate_series(1, 200) g;
        ",
        migration: "
            ALTER TABLE counter ALTER COLUMN id TYPE bigint, ALTER COLUMN hits TYPE bigint,
                ALTER COLUMN total TYPE bigint;
            ALTER TABLE sample ALTER COLUMN counter TYPE bigint, ALTER COLUMN v TYPE bigint;
        ",
        mapping: "",
        needs_mapping: None,
        load: |r| {
            let i = id(r, 120);
            let big = r.random_range(-2_147_483_648i64..=2_147_483_647);
            match r.random_range(0..6) {
                0 => format!(
                    "INSERT INTO counter VALUES ({i}, 0, {big}) ON CONFLICT (id) DO UPDATE SET hits = counter.hits + 1"
                ),
                1 => format!("UPDATE counter SET total = {big} WHERE id = {i}"),
                2 => format!("DELETE FROM counter WHERE id = {i}"),
                3 => format!(
                    "INSERT INTO sample VALUES ({i}, {}, {big}) ON CONFLICT (counter, n) DO UPDATE SET v = excluded.v",
                    id(r, 20)
                ),
                4 => format!("DELETE FROM sample WHERE counter = {i} AND n > {}", id(r, 20)),
                _ => format!("UPDATE counter SET hits = 2147483000 - {i} WHERE id = {i}"),
            }
        },
        compare: &[
            (
                "SELECT id, hits, total, 'bigint' FROM counter ORDER BY id",
                "SELECT id, hits, total, pg_typeof(total)::text FROM counter ORDER BY id",
            ),
            (
                "SELECT counter, n, v FROM sample ORDER BY counter, n",
                "SELECT counter, n, v FROM sample ORDER BY counter, n",
            ),
        ],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_split_in_two() -> Result<()> {
    run(Scenario {
        seed: 4,
        schema: "CREATE TABLE person (id int PRIMARY KEY, name text, age int)",
        rows: "INSERT INTO person SELECT g, 'First' || g || ' Last' || g, g FROM generate_series(1, 100) g",
        migration: "
            ALTER TABLE person ADD COLUMN first_name text, ADD COLUMN last_name text;
            UPDATE person SET first_name = split_part(name, ' ', 1), last_name = split_part(name, ' ', 2);
            ALTER TABLE person DROP COLUMN name;
        ",
        mapping: r#"
            [tables.person.columns]
            first_name = "split_part(name, ' ', 1)"
            last_name = "split_part(name, ' ', 2)"
            [tables.person.reverse]
            name = "first_name || ' ' || last_name"
        "#,
        needs_mapping: Some("column name"),
        load: |r| {
            let i = id(r, 200);
            let (a, b) = (id(r, 50), id(r, 50));
            match r.random_range(0..5) {
                0 => format!(
                    "INSERT INTO person VALUES ({i}, 'f{a} l{b}', {a}) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name"
                ),
                1 => format!("UPDATE person SET name = 'g{a} m{b}' WHERE id = {i}"),
                2 => format!("UPDATE person SET age = age + 1 WHERE id BETWEEN {i} AND {i} + 3"),
                3 => format!("DELETE FROM person WHERE id = {i}"),
                _ => format!(
                    "UPDATE person SET name = CASE WHEN {a} % 2 = 0 THEN NULL ELSE 'solo{a}' END \
                     WHERE id = {i}"
                ),
            }
        },
        compare: &[(
            "SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), age FROM person ORDER BY id",
            "SELECT id, first_name, last_name, age FROM person ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_null_column_backfilled() -> Result<()> {
    // The target column is NOT NULL without a default: only the mapping's
    // expression lets replayed inserts satisfy it.
    run(Scenario {
        seed: 5,
        schema: "CREATE TABLE orders (id int PRIMARY KEY, qty int, price int, note text)",
        rows: "INSERT INTO orders SELECT g, g % 5, CASE WHEN g % 9 = 0 THEN NULL ELSE g END, 'o'
               FROM generate_series(1, 100) g",
        migration: "
            ALTER TABLE orders ADD COLUMN total bigint;
            UPDATE orders SET total = coalesce(qty, 0)::bigint * coalesce(price, 0);
            ALTER TABLE orders ALTER COLUMN total SET NOT NULL;
        ",
        mapping: r#"
            [tables.orders.columns]
            total = "coalesce(qty, 0)::bigint * coalesce(price, 0)"
        "#,
        needs_mapping: Some("NOT NULL without a default"),
        load: |r| {
            let i = id(r, 200);
            let (q, p) = (r.random_range(0..100), r.random_range(0..100_000));
            match r.random_range(0..5) {
                0 => format!(
                    "INSERT INTO orders VALUES ({i}, {q}, {p}, 'n') \
                     ON CONFLICT (id) DO UPDATE SET qty = orders.qty + 1"
                ),
                1 => format!("UPDATE orders SET price = {p} WHERE id = {i}"),
                2 => format!("UPDATE orders SET qty = NULL WHERE id = {i}"),
                3 => format!("DELETE FROM orders WHERE id = {i}"),
                _ => format!("INSERT INTO orders (id, note) VALUES ({i}, 'bare') ON CONFLICT DO NOTHING"),
            }
        },
        compare: &[(
            "SELECT id, qty, price, note, coalesce(qty, 0)::bigint * coalesce(price, 0) FROM orders ORDER BY id",
            "SELECT id, qty, price, note, total FROM orders ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_column() -> Result<()> {
    run(Scenario {
        seed: 6,
        schema: "CREATE TABLE profile (id int PRIMARY KEY, email text NOT NULL, legacy text, score int)",
        rows: "INSERT INTO profile SELECT g, 'u' || g || '@x', 'old', g FROM generate_series(1, 100) g",
        migration: "ALTER TABLE profile DROP COLUMN legacy",
        mapping: r#"
            [tables.profile]
            drop = ["legacy"]
        "#,
        needs_mapping: Some("list it in `drop`"),
        load: |r| {
            let i = id(r, 200);
            match r.random_range(0..4) {
                0 => format!(
                    "INSERT INTO profile VALUES ({i}, 'e{i}', 'l', 0) \
                     ON CONFLICT (id) DO UPDATE SET score = profile.score + 1"
                ),
                // Writes that touch only the dropped column still sync the row.
                1 => format!("UPDATE profile SET legacy = 'changed' WHERE id = {i}"),
                2 => format!("UPDATE profile SET email = email || '.', legacy = NULL WHERE id = {i}"),
                _ => format!("DELETE FROM profile WHERE id = {i}"),
            }
        },
        compare: &[(
            "SELECT id, email, score FROM profile ORDER BY id",
            "SELECT id, email, score FROM profile ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_deletes() -> Result<()> {
    // Deleting an author cascades to its books, their chapters (two levels)
    // and nulls the book of their reviews; capture sees only the author.
    // The review's foreign-key column is renamed on the target.
    run(Scenario {
        seed: 7,
        schema: "
            CREATE TABLE author (id int PRIMARY KEY, name text);
            CREATE TABLE book (id int PRIMARY KEY, author int NOT NULL REFERENCES author ON DELETE CASCADE, title text);
            CREATE TABLE chapter (book int REFERENCES book ON DELETE CASCADE, n int, words int, PRIMARY KEY (book, n));
            CREATE TABLE review (id int PRIMARY KEY, book int REFERENCES book ON DELETE SET NULL, stars int);
        ",
        rows: "
            INSERT INTO author SELECT g, 'a' || g FROM generate_series(1, 30) g;
            INSERT INTO book SELECT g, g % 30 + 1, 't' || g FROM generate_series(1, 100) g;
            INSERT INTO chapter SELECT g % 100 + 1, g, g * 10 FROM generate_series(1, 300) g;
            INSERT INTO review SELECT g, g % 100 + 1, g % 5 FROM generate_series(1, 150) g;
        ",
        migration: "ALTER TABLE review RENAME COLUMN book TO book_id",
        mapping: r#"
            [tables.review.columns]
            book_id = "book"
        "#,
        needs_mapping: Some("column book"),
        load: |r| {
            let (a, b, n) = (id(r, 40), id(r, 150), id(r, 8));
            match r.random_range(0..20) {
                0..=2 => format!(
                    "INSERT INTO author VALUES ({a}, 'a') ON CONFLICT (id) DO UPDATE SET name = author.name || '+'"
                ),
                3..=6 => format!(
                    "INSERT INTO book VALUES ({b}, {a}, 't') ON CONFLICT (id) DO UPDATE SET title = book.title || '+'"
                ),
                7 => format!("UPDATE book SET author = {a} WHERE id = {b}"),
                8 => format!("DELETE FROM author WHERE id = {a}"),
                9 => format!("DELETE FROM book WHERE id = {b}"),
                10..=13 => format!(
                    "INSERT INTO chapter VALUES ({b}, {n}, 1) \
                     ON CONFLICT (book, n) DO UPDATE SET words = chapter.words + 1"
                ),
                14 | 15 => format!(
                    "INSERT INTO review VALUES ({}, {b}, {n}) ON CONFLICT (id) DO UPDATE SET book = excluded.book",
                    id(r, 200)
                ),
                16 => format!("UPDATE review SET stars = stars + 1 WHERE book = {b}"),
                17 => format!("DELETE FROM chapter WHERE book = {b} AND n > {n}"),
                // Deleted and created again in one transaction: capture logs
                // the author once, yet its old books are gone on the source.
                _ => format!(
                    "BEGIN; DELETE FROM author WHERE id = {a}; INSERT INTO author VALUES ({a}, 'again'); \
                     INSERT INTO book VALUES ({b}, {a}, 'new') ON CONFLICT (id) DO UPDATE SET author = {a}; COMMIT"
                ),
            }
        },
        compare: &[
            (
                "SELECT id, name FROM author ORDER BY id",
                "SELECT id, name FROM author ORDER BY id",
            ),
            (
                "SELECT id, author, title FROM book ORDER BY id",
                "SELECT id, author, title FROM book ORDER BY id",
            ),
            (
                "SELECT book, n, words FROM chapter ORDER BY book, n",
                "SELECT book, n, words FROM chapter ORDER BY book, n",
            ),
            (
                "SELECT id, book, stars FROM review ORDER BY id",
                "SELECT id, book_id, stars FROM review ORDER BY id",
            ),
        ],
    })
    .await
}

/// Key texts that need care: spaces, quotes, separators, array and NULL
/// look-alikes, non-ASCII, empty, backslash.
const SKUS: &[&str] = &[
    "a",
    "b c",
    "it''s",
    "x,y",
    "{q}",
    "NULL",
    "é",
    "",
    "back\\slash",
    "\"dq\"",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys() -> Result<()> {
    // Two- and three-column keys with awkward text values; the target
    // declares its keys in another column order.
    run(Scenario {
        seed: 8,
        schema: "
            CREATE TABLE stock (warehouse int, sku text, qty int NOT NULL DEFAULT 0, bin text,
                PRIMARY KEY (warehouse, sku));
            CREATE TABLE movement (warehouse int, sku text, seq int, delta int, PRIMARY KEY (warehouse, sku, seq),
                FOREIGN KEY (warehouse, sku) REFERENCES stock ON DELETE CASCADE);
        ",
        rows: "
            INSERT INTO stock SELECT w, s, w, 'b' FROM generate_series(1, 8) w,
                unnest(ARRAY['a', 'b c', 'x,y', 'é']) s;
            INSERT INTO movement SELECT warehouse, sku, g, g FROM stock, generate_series(1, 3) g;
        ",
        migration: "
            ALTER TABLE movement DROP CONSTRAINT movement_pkey,
                DROP CONSTRAINT movement_warehouse_sku_fkey;
            ALTER TABLE stock DROP CONSTRAINT stock_pkey;
            ALTER TABLE stock ADD PRIMARY KEY (sku, warehouse);
            ALTER TABLE movement ADD PRIMARY KEY (seq, sku, warehouse),
                ADD FOREIGN KEY (sku, warehouse) REFERENCES stock (sku, warehouse) ON DELETE CASCADE;
        ",
        mapping: "",
        needs_mapping: None,
        load: |r| {
            let w = id(r, 12);
            let s = SKUS[r.random_range(0..SKUS.len())];
            let n = id(r, 6);
            match r.random_range(0..12) {
                0..=2 => format!(
                    "INSERT INTO stock VALUES ({w}, '{s}', 1, 'b') \
                     ON CONFLICT (warehouse, sku) DO UPDATE SET qty = stock.qty + 1"
                ),
                3 => format!("UPDATE stock SET qty = qty - 1 WHERE warehouse = {w}"),
                4 => format!("UPDATE stock SET bin = 'bin{n}' WHERE warehouse = {w} AND sku = '{s}'"),
                5 => format!("DELETE FROM stock WHERE warehouse = {w} AND sku = '{s}'"),
                6 => format!("DELETE FROM stock WHERE sku = '{s}' AND warehouse > {w} + 6"),
                7..=10 => format!(
                    "INSERT INTO movement VALUES ({w}, '{s}', {n}, {n}) \
                     ON CONFLICT (warehouse, sku, seq) DO UPDATE SET delta = movement.delta + 1"
                ),
                _ => format!("DELETE FROM movement WHERE warehouse = {w} AND seq > {n}"),
            }
        },
        compare: &[
            (
                "SELECT warehouse, sku, qty, bin FROM stock ORDER BY warehouse, sku",
                "SELECT warehouse, sku, qty, bin FROM stock ORDER BY warehouse, sku",
            ),
            (
                "SELECT warehouse, sku, seq, delta FROM movement ORDER BY warehouse, sku, seq",
                "SELECT warehouse, sku, seq, delta FROM movement ORDER BY warehouse, sku, seq",
            ),
        ],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_tables() -> Result<()> {
    // Renamed in place, a child renamed along with its parent (so cascades
    // are followed into renamed tables), and one moved to another schema.
    run(Scenario {
        seed: 9,
        schema: "
            CREATE TABLE ledger (id int PRIMARY KEY, account int, amount int);
            CREATE TABLE ledger_line (ledger int REFERENCES ledger ON DELETE CASCADE, n int, memo text,
                PRIMARY KEY (ledger, n));
            CREATE TABLE tag (id int PRIMARY KEY, label text);
        ",
        rows: "
            INSERT INTO ledger SELECT g, g % 10, g * 3 FROM generate_series(1, 100) g;
            INSERT INTO ledger_line SELECT g % 100 + 1, g, 'm' FROM generate_series(1, 200) g;
            INSERT INTO tag SELECT g, 't' || g FROM generate_series(1, 50) g;
        ",
        migration: "
            ALTER TABLE ledger RENAME TO journal;
            ALTER TABLE ledger_line RENAME TO journal_line;
            CREATE SCHEMA app;
            ALTER TABLE tag SET SCHEMA app;
        ",
        mapping: r#"
            [tables.ledger]
            target = "journal"
            [tables.ledger_line]
            target = "journal_line"
            [tables.tag]
            target = "app.tag"
        "#,
        needs_mapping: Some("does not exist in the target database"),
        load: |r| {
            let (i, n) = (id(r, 150), id(r, 6));
            match r.random_range(0..7) {
                0 => format!(
                    "INSERT INTO ledger VALUES ({i}, {n}, 1) \
                     ON CONFLICT (id) DO UPDATE SET amount = ledger.amount + 1"
                ),
                1 => format!("UPDATE ledger SET account = {n} WHERE id = {i}"),
                2 => format!("DELETE FROM ledger WHERE id = {i}"),
                3 => format!(
                    "INSERT INTO ledger_line VALUES ({i}, {n}, 'x') \
                     ON CONFLICT (ledger, n) DO UPDATE SET memo = ledger_line.memo || 'y'"
                ),
                4 => format!("DELETE FROM ledger_line WHERE ledger = {i}"),
                5 => format!(
                    "INSERT INTO tag VALUES ({i}, 'l') \
                     ON CONFLICT (id) DO UPDATE SET label = tag.label || '!'"
                ),
                _ => format!("DELETE FROM tag WHERE id = {i}"),
            }
        },
        compare: &[
            (
                "SELECT id, account, amount FROM ledger ORDER BY id",
                "SELECT id, account, amount FROM journal ORDER BY id",
            ),
            (
                "SELECT ledger, n, memo FROM ledger_line ORDER BY ledger, n",
                "SELECT ledger, n, memo FROM journal_line ORDER BY ledger, n",
            ),
            (
                "SELECT id, label FROM tag ORDER BY id",
                "SELECT id, label FROM app.tag ORDER BY id",
            ),
        ],
    })
    .await
}
