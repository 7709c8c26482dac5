//! COPY FROM STDIN whose rows end in `\r` or `\r\n` (text and CSV), rows
//! and line endings split across CopyData messages, the `\.` end marker
//! in each newline style, HEADER: every row PostgreSQL inserts has its key
//! in the log. Data PostgreSQL refuses (mixed newline styles) commits
//! nothing. Sent over the raw protocol, so message boundaries are exact.
//! Also a COPY into a table capture does not tap, pipelined as
//! tokio-postgres sends it: the writes after it are captured as usual.

use super::{wrote, Escape};
use crate::support::{frontend, query_msg, RawConn};
use anyhow::{bail, ensure, Result};

const SCHEMA: &str = "CREATE TABLE t (id int PRIMARY KEY, v text)";

/// Runs `sql` (a COPY FROM STDIN) sending each chunk as one CopyData, then
/// CopyDone; returns the SQLSTATE of the error, if the COPY failed.
async fn copy_raw(e: &Escape, sql: &str, chunks: &[&[u8]]) -> Result<Option<String>> {
    let user = e.f.cluster.superuser().to_owned();
    let mut c = RawConn::start(e.proxy().addr(), &user, "postgres").await?;
    c.send(&query_msg(sql)).await?;
    loop {
        let m = c.expect_message().await?;
        match m.tag {
            b'G' => break,
            b'E' => bail!("{sql}: {:?}", m.fields()),
            _ => {}
        }
    }
    for chunk in chunks {
        c.send(&frontend(b'd', chunk)).await?;
    }
    c.send(&frontend(b'c', &[])).await?;
    let answer = c.until_ready().await?;
    Ok(answer.iter().find_map(|m| m.code()))
}

/// The ids in `t`, in order.
async fn ids(e: &Escape) -> Result<Vec<i32>> {
    let rows = e.direct.query("SELECT id FROM t ORDER BY id", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Runs a COPY that must succeed and checks that it added exactly `added`.
async fn copy_ok(e: &Escape, sql: &str, chunks: &[&[u8]], added: &[i32]) -> Result<()> {
    let before = ids(e).await?;
    if let Some(code) = copy_raw(e, sql, chunks).await? {
        bail!("{sql} {chunks:?} failed with {code}");
    }
    let mut want = before;
    want.extend_from_slice(added);
    want.sort_unstable();
    let got = ids(e).await?;
    ensure!(got == want, "{sql} {chunks:?}: ids {got:?}, want {want:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_text_with_each_line_ending_is_captured() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let sql = "COPY t FROM STDIN";
    copy_ok(&e, sql, &[b"1\ta\n2\tb\n"], &[1, 2]).await?;
    copy_ok(&e, sql, &[b"3\ta\r4\tb\r5\tc\r"], &[3, 4, 5]).await?;
    copy_ok(&e, sql, &[b"6\ta\r\n7\tb\r\n"], &[6, 7]).await?;
    // A \r\n pair split across messages, and a \r at the end of one.
    copy_ok(&e, sql, &[b"8\ta\r", b"\n9\tb\r", b"\n10\tc\r\n"], &[8, 9, 10]).await?;
    copy_ok(&e, sql, &[b"11\ta\r", b"12\tb\r1", b"3\tc\r"], &[11, 12, 13]).await?;
    // Rows cut mid-field, a last row without a line ending.
    copy_ok(&e, sql, &[b"14\ta\r15\t", b"b\r16", b"\tc"], &[14, 15, 16]).await?;
    // The end marker in each style; what follows it is not data.
    copy_ok(&e, sql, &[b"17\ta\r\\.\r99\tx\r"], &[17]).await?;
    copy_ok(&e, sql, &[b"18\ta\r\n\\", b".\r\n"], &[18]).await?;
    copy_ok(&e, sql, &[b"19\ta\n\\.\n"], &[19]).await?;
    // An escaped \r or \n is data, not a line end.
    copy_ok(&e, sql, &[b"20\ta\\\rb\r21\tc\r"], &[20, 21]).await?;
    // HEADER in text format (PostgreSQL 15).
    copy_ok(
        &e,
        "COPY t FROM STDIN WITH (HEADER)",
        &[b"id\tv\r22\ta\r23\tb\r"],
        &[22, 23],
    )
    .await?;
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.t"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_csv_with_each_line_ending_is_captured() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let sql = "COPY t FROM STDIN WITH (FORMAT csv)";
    copy_ok(&e, sql, &[b"1,a\n2,\"x\ny\"\n"], &[1, 2]).await?;
    copy_ok(&e, sql, &[b"3,a\r4,\"x\ry\"\r5,b\r"], &[3, 4, 5]).await?;
    copy_ok(&e, sql, &[b"6,a\r\n7,\"x\r\ny\"\r\n"], &[6, 7]).await?;
    copy_ok(&e, sql, &[b"8,a\r", b"\n9,\"b\r", b"\n\"\r", b"\n10,c"], &[8, 9, 10]).await?;
    copy_ok(&e, sql, &[b"11,a\r\\.\r99,x\r"], &[11]).await?;
    copy_ok(&e, sql, &[b"12,a\r\n\\.\r\n"], &[12]).await?;
    // `\.` that is not alone on its line is data in CSV.
    copy_ok(&e, sql, &[b"13,\\.\r"], &[13]).await?;
    copy_ok(
        &e,
        "COPY t (v, id) FROM STDIN WITH (FORMAT csv)",
        &[b"\\.,20\r\\.x,21\r"],
        &[20, 21],
    )
    .await?;
    let hdr = "COPY t FROM STDIN WITH (FORMAT csv, HEADER)";
    copy_ok(&e, hdr, &[b"id,v\r\n", b"14,a\r\n15,b\r\n"], &[14, 15]).await?;
    copy_ok(&e, hdr, &[b"id,v\r16,a\r17,b"], &[16, 17]).await?;
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.t"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_mixed_line_endings_fails_and_commits_nothing() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    for (sql, data) in [
        ("COPY t FROM STDIN", &b"1\ta\n2\tb\r\n"[..]),
        ("COPY t FROM STDIN", b"1\ta\r\n2\tb\n"),
        ("COPY t FROM STDIN", b"1\ta\r\n2\tb\r3\tc\r\n"),
        ("COPY t FROM STDIN", b"1\ta\r2\tb\n"),
        ("COPY t FROM STDIN WITH (FORMAT csv)", b"1,a\n2,b\r"),
        ("COPY t FROM STDIN", b"1\ta\r\n\\.\n"),
    ] {
        let code = copy_raw(&e, sql, &[data]).await?;
        ensure!(code.as_deref() == Some("22P04"), "{data:?}: {code:?}");
    }
    ensure!(ids(&e).await?.is_empty());
    e.finish().await?;
    Ok(())
}

/// tokio-postgres sends a COPY's Bind, Execute and Sync before the server's
/// CopyInResponse (the server ignores that Sync), then CopyDone and Sync.
/// Into a temporary table, which capture does not tap, the proxy must
/// still pair every later answer with its request: the writes after it
/// are wrapped, held and committed as usual, and their keys logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_an_uncaptured_table_keeps_later_answers_paired() -> Result<()> {
    use bytes::Bytes;
    use futures_util::{pin_mut, SinkExt};
    let e = Escape::start(SCHEMA).await?;
    let c = e.client().await?;
    c.batch_execute("CREATE TEMP TABLE scratch (x int)").await?;
    let sink = c.copy_in::<_, Bytes>("COPY scratch FROM STDIN").await?;
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\n2\n3\n")).await?;
    ensure!(sink.finish().await? == 3, "three rows copied");
    let wait = std::time::Duration::from_secs(10);
    let writes = async {
        c.simple_query("INSERT INTO t VALUES (1, 'a')").await?;
        c.execute("INSERT INTO t VALUES ($1, 'b')", &[&2i32]).await?;
        c.query_one("SELECT count(*) FROM scratch", &[]).await
    };
    let n: i64 = crate::support::within(wait, "writes after the COPY", writes)
        .await??
        .get(0);
    ensure!(n == 3, "scratch has {n} rows");
    ensure!(ids(&e).await? == [1, 2]);
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.t"));
    Ok(())
}
