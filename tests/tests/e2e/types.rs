//! Values of many types through the proxy, both ways: binary results
//! compared byte for byte with the same query run directly, text results
//! compared with direct and with what was written, binary parameters.

use anyhow::Result;
use std::error::Error as StdError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// One value of most kinds a driver meets: integers at their limits, float,
/// bool, non-ASCII text, bytea, numeric, timestamptz, arrays with NULLs,
/// json and jsonb, NULL, uuid, interval, date.
const TYPES_SQL: &str = r#"select 42::int2, 2147483647::int4, '-9223372036854775808'::int8,
    3.5::float8, true, 'héllo wörld ☃'::text, '\x00ff10'::bytea, 12345.6789::numeric,
    '2024-02-29 12:34:56.789+00'::timestamptz, array[1, 2, null]::int4[],
    array['a', 'b c']::text[], '{"k": [1, 2, {"x": null}]}'::json, '{"k": 1}'::jsonb,
    null::int4, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, interval '1 day 2 hours',
    '2024-01-01'::date"#;

/// A column's binary value exactly as the server sent it.
#[derive(Debug, PartialEq, Eq)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Every column of the first row as text (simple protocol).
async fn text_row(client: &Client, sql: &str) -> Result<Vec<Option<String>>> {
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
        }
    }
    anyhow::bail!("{sql}: no row")
}

#[tokio::test]
async fn binary_results_are_identical_to_direct() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;

    // tokio-postgres asks for every result column in binary.
    let via = client.query_one(TYPES_SQL, &[]).await?;
    let want = direct.query_one(TYPES_SQL, &[]).await?;
    assert_eq!(via.len(), 17);
    for i in 0..via.len() {
        let (a, b): (Raw, Raw) = (via.try_get(i)?, want.try_get(i)?);
        assert_eq!(a, b, "column {i} ({}) differs", via.columns()[i].type_());
    }
    // And the values are the ones written.
    assert_eq!(via.get::<_, i16>(0), 42);
    assert_eq!(via.get::<_, i32>(1), i32::MAX);
    assert_eq!(via.get::<_, i64>(2), i64::MIN);
    assert_eq!(via.get::<_, f64>(3), 3.5);
    assert!(via.get::<_, bool>(4));
    assert_eq!(via.get::<_, String>(5), "héllo wörld ☃");
    assert_eq!(via.get::<_, Vec<u8>>(6), [0x00, 0xff, 0x10]);
    assert_eq!(
        via.get::<_, SystemTime>(8),
        UNIX_EPOCH + Duration::from_millis(1_709_210_096_789)
    );
    assert_eq!(via.get::<_, Vec<Option<i32>>>(9), [Some(1), Some(2), None]);
    assert_eq!(via.get::<_, Vec<String>>(10), ["a", "b c"]);
    assert_eq!(
        via.get::<_, Raw>(11),
        Raw(Some(br#"{"k": [1, 2, {"x": null}]}"#.to_vec()))
    );
    // jsonb's binary form is a version byte and the text.
    assert_eq!(via.get::<_, Raw>(12), Raw(Some(b"\x01{\"k\": 1}".to_vec())));
    assert_eq!(via.get::<_, Option<i32>>(13), None);
    Ok(())
}

#[tokio::test]
async fn text_results_match_direct() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;
    for c in [&client, &direct] {
        c.batch_execute("set timezone = 'UTC'; set intervalstyle = 'postgres'")
            .await?;
    }
    let via = text_row(&client, TYPES_SQL).await?;
    assert_eq!(via, text_row(&direct, TYPES_SQL).await?);
    let s = |v: &str| Some(v.to_owned());
    let want = vec![
        s("42"),
        s("2147483647"),
        s("-9223372036854775808"),
        s("3.5"),
        s("t"),
        s("héllo wörld ☃"),
        s(r"\x00ff10"),
        s("12345.6789"),
        s("2024-02-29 12:34:56.789+00"),
        s("{1,2,NULL}"),
        s(r#"{a,"b c"}"#),
        s(r#"{"k": [1, 2, {"x": null}]}"#),
        s(r#"{"k": 1}"#),
        None,
        s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        s("1 day 02:00:00"),
        s("2024-01-01"),
    ];
    assert_eq!(via, want);
    Ok(())
}

#[tokio::test]
async fn binary_parameters_round_trip() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;

    let ts = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let text = "with 'quotes', \"doubles\", \\ and 😀";
    let blob: Vec<u8> = (0..=255u8).collect();
    let ints = vec![Some(1i32), None, Some(-3)];
    let words = vec!["x".to_owned(), "y,z".to_owned(), "{}".to_owned()];
    let row = client
        .query_one(
            "select $1::int2, $2::int4, $3::int8, $4::float8, $5::bool, $6::text, $7::bytea,
                    $8::timestamptz, $9::int4[], $10::text[], $11::int4,
                    length($7::bytea), $6::text = $12::text",
            &[
                &-7i16,
                &123_456i32,
                &(1i64 << 40),
                &-0.25f64,
                &false,
                &text,
                &blob,
                &ts,
                &ints,
                &words,
                &None::<i32>,
                &text,
            ],
        )
        .await?;
    assert_eq!(row.get::<_, i16>(0), -7);
    assert_eq!(row.get::<_, i32>(1), 123_456);
    assert_eq!(row.get::<_, i64>(2), 1 << 40);
    assert_eq!(row.get::<_, f64>(3), -0.25);
    assert!(!row.get::<_, bool>(4));
    assert_eq!(row.get::<_, String>(5), text);
    assert_eq!(row.get::<_, Vec<u8>>(6), blob);
    assert_eq!(row.get::<_, SystemTime>(7), ts);
    assert_eq!(row.get::<_, Vec<Option<i32>>>(8), ints);
    assert_eq!(row.get::<_, Vec<String>>(9), words);
    assert_eq!(row.get::<_, Option<i32>>(10), None);
    assert_eq!(row.get::<_, i32>(11), 256);
    assert!(row.get::<_, bool>(12));
    Ok(())
}
