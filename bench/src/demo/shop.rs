//! The demo's sample shop: its schema and data on the source, the migration
//! run on the target (three changes that would each lock a hot table on a
//! live database), the mapping catch-up applies them with, and the queries
//! that read a table's rows as each side holds them, for the final check.

/// The shop's database, on both servers.
pub(super) const DB: &str = "shop";

/// Customers, products and orders in the sample data.
pub(super) const CUSTOMERS: i32 = 2_000;
pub(super) const PRODUCTS: i32 = 200;
pub(super) const ORDERS: i64 = 20_000;

/// Stock each product starts with: far more than any run sells.
pub(super) const INITIAL_STOCK: i64 = 1_000_000;

/// The source's schema and data. `orders.id` is a `serial` (int4): the
/// table the migration widens.
pub(super) const SCHEMA_AND_DATA: &str = "
CREATE TABLE customers (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE products (
    id    serial PRIMARY KEY,
    sku   text NOT NULL UNIQUE,
    name  text NOT NULL,
    price numeric(10, 2) NOT NULL,
    stock bigint NOT NULL
);
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    product_id  int NOT NULL REFERENCES products (id),
    quantity    int NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    tag         text
);
CREATE INDEX orders_customer_id ON orders (customer_id);
INSERT INTO customers (name, email, created_at)
SELECT 'customer ' || i, 'customer' || i || '@example.com',
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
FROM generate_series(1, 2000) AS i;
INSERT INTO products (sku, name, price, stock)
SELECT 'SKU-' || lpad(i::text, 4, '0'), 'product ' || i, round((2 + (i * 37) % 300)::numeric + 0.99, 2), 1000000
FROM generate_series(1, 200) AS i;
INSERT INTO orders (customer_id, product_id, quantity, amount, status, created_at)
SELECT 1 + (i * 7919) % 2000, 1 + (i * 31) % 200, 1 + i % 3, 0,
       (ARRAY['new', 'paid', 'shipped', 'delivered'])[1 + i % 4],
       timestamptz '2024-03-01 00:00:00+00' + i * interval '10 minutes'
FROM generate_series(1, 20000) AS i;
UPDATE orders o SET amount = o.quantity * p.price FROM products p WHERE p.id = o.product_id;
ANALYZE;
";

/// The migration, run on the target while the source takes the load. On a
/// live database each statement would hold an ACCESS EXCLUSIVE lock on a
/// table the application writes all the time: the type change rewrites
/// `orders`, the backfill rewrites `products` and SET NOT NULL scans it,
/// and the rename breaks every query that names the old column at once.
pub(super) const MIGRATION: &[(&str, &str)] = &[
    (
        "orders.id int -> bigint (table rewrite)",
        "ALTER TABLE orders ALTER COLUMN id TYPE bigint; ALTER SEQUENCE orders_id_seq AS bigint",
    ),
    (
        "products.price_cents bigint NOT NULL, backfilled",
        "ALTER TABLE products ADD COLUMN price_cents bigint; \
         UPDATE products SET price_cents = (price * 100)::bigint; \
         ALTER TABLE products ALTER COLUMN price_cents SET NOT NULL",
    ),
    (
        "customers.name renamed to full_name",
        "ALTER TABLE customers RENAME COLUMN name TO full_name",
    ),
];

/// How a source row becomes a target row: the backfill's expression for
/// rows catch-up writes, and the rename. The type change needs no entry.
pub(super) const MAPPING: &str = r#"# The demo's migration: how a source row becomes a target row.
[tables.products.columns]
price_cents = "(price * 100)::bigint"    # the new NOT NULL column, as the backfill computed it

[tables.customers.columns]
full_name = "name"                       # the renamed column
[tables.customers.reverse]
name = "full_name"
"#;

/// One table as the final check reads it: the key first, every other
/// column as text, the source's through the mapping.
pub(super) struct Compared {
    pub(super) table: &'static str,
    pub(super) source: &'static str,
    pub(super) target: &'static str,
}

/// Every table of the shop, each side's columns in the same order.
pub(super) const COMPARED: [Compared; 3] = [
    Compared {
        table: "customers",
        source: "SELECT id::text, name, email, created_at::text FROM customers",
        target: "SELECT id::text, full_name, email, created_at::text FROM customers",
    },
    Compared {
        table: "products",
        source: "SELECT id::text, sku, name, price::text, stock::text, ((price * 100)::bigint)::text FROM products",
        target: "SELECT id::text, sku, name, price::text, stock::text, price_cents::text FROM products",
    },
    Compared {
        table: "orders",
        source: "SELECT id::text, customer_id::text, product_id::text, quantity::text, amount::text, status, \
                 created_at::text, tag FROM orders",
        target: "SELECT id::text, customer_id::text, product_id::text, quantity::text, amount::text, status, \
                 created_at::text, tag FROM orders",
    },
];
