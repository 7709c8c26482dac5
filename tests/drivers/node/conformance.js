// node-postgres conformance script: what pg's own suite would check, for a
// server or proxy named by PGHOST/PGPORT/PGUSER/PGDATABASE. The pg package
// ships no tests, so tests/tests/e2e/drivers.rs runs this directly and
// through switchyard and compares. Each test is top-level and opens its own
// clients, so that one failure leaves the others meaningful.
'use strict'

const nodeTest = require('node:test')
const assert = require('node:assert/strict')
const { pipeline } = require('node:stream/promises')
const { Readable, Writable } = require('node:stream')
const pg = require('pg')
const copy = require('pg-copy-streams')
const Cursor = require('pg-cursor')
const QueryStream = require('pg-query-stream')

// Long enough for a loaded CI machine, short enough to fail rather than hang.
// (pg's own query_timeout would do per query, but its timer outlives COPY
// and cursor queries and holds the process open for as long.)
const TEST_TIMEOUT_MS = 20000

function test (name, fn) {
  nodeTest.test(name, { timeout: TEST_TIMEOUT_MS }, fn)
}

async function connect (options = {}) {
  const client = new pg.Client(options)
  await client.connect()
  return client
}

async function withClient (fn, options) {
  const client = await connect(options)
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

// Resolves with the error `promise` rejects with; fails if it resolves.
async function failure (promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  assert.fail('expected an error')
}

test('startup reports the backend and its parameters', () => withClient(async (c) => {
  const { rows } = await c.query('SELECT pg_backend_pid() AS pid, current_setting(\'server_version\') AS v')
  // The cancel key must name the real backend, or cancelling cannot work.
  assert.equal(c.processID, rows[0].pid)
  assert.ok(c.secretKey !== undefined)
  assert.match(rows[0].v, /^\d+/)
}))

test('simple query protocol: several statements, several results', () => withClient(async (c) => {
  const results = await c.query('SELECT 1 AS a; SELECT \'two\' AS b, 3 AS c; CREATE TEMP TABLE t (x int)')
  assert.equal(results.length, 3)
  assert.deepEqual(results[0].rows, [{ a: 1 }])
  assert.deepEqual(results[1].rows, [{ b: 'two', c: 3 }])
  assert.equal(results[2].command, 'CREATE')
}))

test('empty query', () => withClient(async (c) => {
  const r = await c.query('')
  assert.equal(r.rows.length, 0)
}))

test('extended protocol: parameters and types round-trip', () => withClient(async (c) => {
  const when = new Date('2024-02-29T12:34:56.789Z')
  const bytes = Buffer.from([0, 1, 2, 253, 254, 255])
  const { rows: [r] } = await c.query(
    `SELECT $1::int4 AS i, $2::int8 AS big, $3::numeric AS num, $4::float8 AS f,
            $5::bool AS b, $6::text AS s, $7::bytea AS bin, $8::jsonb AS j,
            $9::timestamptz AS ts, $10::int4[] AS arr, $11::text[] AS tarr, $12::text AS nul,
            '1 day 02:03:04'::interval AS iv, '2024-01-02'::date AS d`,
    [42, '9007199254740993', '12345678901234567890.123', 1.5, true, 'héllo ✓ 𝄞', bytes,
      { a: [1, 'x', null] }, when, [1, null, 3], ['a', 'b,c', '"q"'], null])
  assert.equal(r.i, 42)
  assert.equal(r.big, '9007199254740993')
  assert.equal(r.num, '12345678901234567890.123')
  assert.equal(r.f, 1.5)
  assert.equal(r.b, true)
  assert.equal(r.s, 'héllo ✓ 𝄞')
  assert.deepEqual(r.bin, bytes)
  assert.deepEqual(r.j, { a: [1, 'x', null] })
  assert.equal(r.ts.getTime(), when.getTime())
  assert.deepEqual(r.arr, [1, null, 3])
  assert.deepEqual(r.tarr, ['a', 'b,c', '"q"'])
  assert.equal(r.nul, null)
  assert.deepEqual({ days: r.iv.days, hours: r.iv.hours, minutes: r.iv.minutes }, { days: 1, hours: 2, minutes: 3 })
  assert.equal(r.d.getFullYear(), 2024)
}))

test('binary result format', () => withClient(async (c) => {
  const r = await c.query({ text: 'SELECT $1::int4 AS i, $2::text AS s, true AS b', values: [7, 'x'], binary: true })
  assert.equal(r.rows[0].i, 7)
  assert.equal(r.rows[0].s, 'x')
  assert.equal(r.rows[0].b, true)
}))

test('row mode and field descriptions', () => withClient(async (c) => {
  const r = await c.query({ text: 'SELECT 1::int4 AS one, \'x\'::text AS two', rowMode: 'array' })
  assert.deepEqual(r.rows, [[1, 'x']])
  assert.deepEqual(r.fields.map((f) => [f.name, f.dataTypeID]), [['one', 23], ['two', 25]])
}))

test('named prepared statements are prepared once and reused', () => withClient(async (c) => {
  for (let i = 0; i < 3; i++) {
    const r = await c.query({ name: 'add_one', text: 'SELECT $1::int4 + 1 AS n', values: [i] })
    assert.equal(r.rows[0].n, i + 1)
  }
  const { rows } = await c.query('SELECT name FROM pg_prepared_statements')
  assert.deepEqual(rows.map((r) => r.name), ['add_one'])
}))

test('large values and many rows', () => withClient(async (c) => {
  const big = 'x'.repeat(8 * 1024 * 1024)
  const r = await c.query('SELECT length($1::text) AS n, $1::text AS s', [big])
  assert.equal(r.rows[0].n, big.length)
  assert.equal(r.rows[0].s, big)
  const many = await c.query('SELECT g, md5(g::text) FROM generate_series(1, 100000) g')
  assert.equal(many.rowCount, 100000)
  assert.equal(many.rows[99999].g, 100000)
}))

test('transactions: commit, rollback, savepoints', () => withClient(async (c) => {
  await c.query('CREATE TEMP TABLE tx (v int)')
  await c.query('BEGIN')
  await c.query('INSERT INTO tx VALUES (1)')
  await c.query('ROLLBACK')
  await c.query('BEGIN')
  await c.query('INSERT INTO tx VALUES (2)')
  await c.query('SAVEPOINT s')
  await c.query('INSERT INTO tx VALUES (3)')
  await c.query('ROLLBACK TO SAVEPOINT s')
  await c.query('COMMIT')
  const r = await c.query('SELECT array_agg(v) AS vs FROM tx')
  assert.deepEqual(r.rows[0].vs, [2])
}))

test('errors carry their fields and the session recovers', () => withClient(async (c) => {
  const syntax = await failure(c.query('SELEC 1'))
  assert.equal(syntax.code, '42601')
  assert.equal(syntax.position, '1')
  await c.query('CREATE TEMP TABLE u (id int PRIMARY KEY)')
  await c.query('INSERT INTO u VALUES (1)')
  const dup = await failure(c.query('INSERT INTO u VALUES ($1)', [1]))
  assert.equal(dup.code, '23505')
  assert.equal(dup.constraint, 'u_pkey')
  assert.match(dup.detail, /already exists/)
  // An error in an explicit transaction aborts it until ROLLBACK.
  await c.query('BEGIN')
  await failure(c.query('SELECT 1/0'))
  const aborted = await failure(c.query('SELECT 1'))
  assert.equal(aborted.code, '25P02')
  await c.query('ROLLBACK')
  // A bad parameter fails at Bind; the next query still works.
  const bind = await failure(c.query('SELECT $1::int4', ['not a number']))
  assert.equal(bind.code, '22P02')
  assert.equal((await c.query('SELECT 5 AS v')).rows[0].v, 5)
}))

test('notices reach the client', () => withClient(async (c) => {
  const notices = []
  c.on('notice', (n) => notices.push(n.message))
  await c.query('DO $$ BEGIN RAISE NOTICE \'hello %\', 42; END $$')
  assert.deepEqual(notices, ['hello 42'])
}))

test('pipeline mode keeps order and isolates a failing query', () => withClient(async (c) => {
  const queries = []
  for (let i = 0; i < 50; i++) {
    const text = i === 25 ? 'SELECT 1/0' : 'SELECT $1::int4 AS i'
    queries.push(c.query(text, i === 25 ? [] : [i]).then((r) => r.rows[0].i, (e) => e.code))
  }
  const got = await Promise.all(queries)
  assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => (i === 25 ? '22012' : i)))
}, { pipeline: true }))

test('COPY FROM STDIN and TO STDOUT', () => withClient(async (c) => {
  await c.query('CREATE TEMP TABLE cp (id int, name text)')
  const lines = Array.from({ length: 5000 }, (_, i) => `${i}\tname ${i}\n`)
  await pipeline(Readable.from(lines), c.query(copy.from('COPY cp FROM STDIN')))
  const r = await c.query('SELECT count(*)::int AS n, sum(id)::int AS s FROM cp')
  assert.deepEqual(r.rows[0], { n: 5000, s: (4999 * 5000) / 2 })
  const chunks = []
  await pipeline(c.query(copy.to('COPY (SELECT id, name FROM cp ORDER BY id) TO STDOUT')),
    new Writable({ write (chunk, _enc, done) { chunks.push(chunk); done() } }))
  assert.equal(Buffer.concat(chunks).toString(), lines.join(''))
}))

test('COPY with bad data fails and the session recovers', () => withClient(async (c) => {
  await c.query('CREATE TEMP TABLE cpbad (id int)')
  const err = await failure(pipeline(Readable.from(['1\n', 'oops\n']), c.query(copy.from('COPY cpbad FROM STDIN'))))
  assert.equal(err.code, '22P02')
  assert.equal((await c.query('SELECT count(*)::int AS n FROM cpbad')).rows[0].n, 0)
}))

test('cursor reads in batches', () => withClient(async (c) => {
  const cursor = c.query(new Cursor('SELECT g FROM generate_series(1, 1000) g'))
  let total = 0
  let batches = 0
  for (;;) {
    const rows = await cursor.read(100)
    if (rows.length === 0) break
    batches++
    for (const r of rows) total += r.g
  }
  await cursor.close()
  assert.equal(batches, 10)
  assert.equal(total, 500500)
}))

test('query stream', () => withClient(async (c) => {
  let n = 0
  const stream = c.query(new QueryStream('SELECT g FROM generate_series(1, 2500) g', [], { batchSize: 100 }))
  for await (const row of stream) n += row.g
  assert.equal(n, (2500 * 2501) / 2)
}))

test('LISTEN/NOTIFY between sessions', async () => {
  const listener = await connect()
  const notifier = await connect()
  try {
    await listener.query('LISTEN switchyard_chan')
    const got = new Promise((resolve) => listener.once('notification', resolve))
    await notifier.query('SELECT pg_notify(\'switchyard_chan\', \'payload 1\')')
    const msg = await got
    assert.equal(msg.channel, 'switchyard_chan')
    assert.equal(msg.payload, 'payload 1')
    assert.equal(msg.processId, notifier.processID)
  } finally {
    await listener.end()
    await notifier.end()
  }
})

// Sends a CancelRequest for `client` on a new connection, as pg's
// Client#cancel does, to wherever the client is connected.
function sendCancel (client) {
  const con = new pg.Connection()
  con.on('connect', () => con.cancel(client.processID, client.secretKey))
  con.on('error', () => {})
  con.connect(client.port, client.host)
}

test('cancel request stops a running query', () => withClient(async (c) => {
  const started = Date.now()
  const running = failure(c.query('SELECT pg_sleep(30)'))
  await new Promise((resolve) => setTimeout(resolve, 300))
  sendCancel(c)
  assert.equal((await running).code, '57014')
  assert.ok(Date.now() - started < 15000)
  assert.equal((await c.query('SELECT 1 AS v')).rows[0].v, 1)
}))

test('pg_cancel_backend from another session', () => withClient(async (c) => {
  const running = failure(c.query('SELECT pg_sleep(30)'))
  await new Promise((resolve) => setTimeout(resolve, 300))
  await withClient((other) => other.query('SELECT pg_cancel_backend($1)', [c.processID]))
  assert.equal((await running).code, '57014')
}))

test('statement_timeout from the connection settings', () => withClient(async (c) => {
  assert.equal((await c.query('SHOW statement_timeout')).rows[0].statement_timeout, '200ms')
  assert.equal((await failure(c.query('SELECT pg_sleep(5)'))).code, '57014')
}, { statement_timeout: 200 }))

test('application_name and options from the startup packet', () => withClient(async (c) => {
  const r = await c.query('SELECT current_setting(\'application_name\') AS a, current_setting(\'search_path\') AS p')
  assert.deepEqual(r.rows[0], { a: 'conformance', p: 'pg_catalog,public' })
}, { application_name: 'conformance', options: '-c search_path=pg_catalog,public' }))

test('session state persists between queries', () => withClient(async (c) => {
  await c.query('SET TIME ZONE \'Asia/Kolkata\'')
  await c.query('PREPARE p(int) AS SELECT $1 * 2 AS v')
  assert.equal((await c.query('SHOW TimeZone')).rows[0].TimeZone, 'Asia/Kolkata')
  assert.equal((await c.query('EXECUTE p(21)')).rows[0].v, 42)
}))

test('pool: concurrent queries across several connections', async () => {
  const pool = new pg.Pool({ max: 4 })
  try {
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) =>
      pool.query('SELECT $1::int4 AS i, pg_backend_pid() AS pid, pg_sleep(0.01)', [i])))
    assert.deepEqual(results.map((r) => r.rows[0].i), Array.from({ length: 40 }, (_, i) => i))
    const pids = new Set(results.map((r) => r.rows[0].pid))
    assert.ok(pids.size >= 1 && pids.size <= 4, `pids ${[...pids]}`)
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      await client.query('SELECT 1')
      await client.query('COMMIT')
    } finally {
      client.release()
    }
  } finally {
    await pool.end()
  }
})

test('terminated backend surfaces as an error', async () => {
  const victim = await connect()
  const errors = []
  victim.on('error', (e) => errors.push(e))
  try {
    await withClient((admin) => admin.query('SELECT pg_terminate_backend($1)', [victim.processID]))
    const err = await failure(victim.query('SELECT 1'))
    assert.ok(err.code === '57P01' || /terminat|Connection/i.test(err.message), err.message)
  } finally {
    // Also when the assertion fails: an open client keeps node from exiting.
    await victim.end().catch(() => {})
  }
})
