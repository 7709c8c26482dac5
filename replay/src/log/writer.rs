//! The capture-log writer's public face: options, the cloneable handle that
//! sessions append through, and statistics. The work happens on a dedicated
//! OS thread (see `writer_thread`), fed by a bounded crossbeam channel.
//!
//! Backpressure without blocking the async runtime: a semaphore with as many
//! permits as the channel has slots is acquired (asynchronously) before each
//! send, and the permit travels with the request until the writer thread
//! takes it off the queue. So `try_send` always finds room, and a full queue
//! suspends the session's task rather than its runtime thread.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Sender, TrySendError};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};

use super::error::LogError;
use super::frame::MAX_PAYLOAD_LEN;
use super::recovery::{recover, RecoveryReport};
use super::segment::lock_dir;
use super::writer_thread::{Request, WriterThread};
use super::{LogBell, Lsn, Record};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once write(2) has returned: survives a proxy crash, not a machine crash.
    #[default]
    Write,
    /// Once fdatasync(2) has returned, once per batch (group commit):
    /// survives a machine crash.
    Fsync,
}

/// How the writer lays out and acknowledges the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogOptions {
    /// Roll over to a new segment once the current one would exceed this
    /// many bytes (a larger record still gets written, alone in a segment).
    pub segment_size: u64,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Appends that may wait in the queue before senders are held back.
    pub queue_capacity: usize,
    /// The largest record payload accepted, in bytes. Callers should split
    /// a transaction with more keys into several commit records.
    pub max_record_bytes: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 64 * 1024 * 1024,
            durability: Durability::Write,
            queue_capacity: 4096,
            max_record_bytes: 256 * 1024 * 1024,
        }
    }
}

impl LogOptions {
    /// Rejects options the writer cannot work with.
    pub fn validate(&self) -> Result<(), LogError> {
        if self.segment_size == 0 {
            return Err(LogError::InvalidOptions("segment_size must be positive"));
        }
        if self.queue_capacity == 0 {
            return Err(LogError::InvalidOptions("queue_capacity must be positive"));
        }
        if self.queue_capacity > Semaphore::MAX_PERMITS {
            return Err(LogError::InvalidOptions("queue_capacity is too large"));
        }
        if self.max_record_bytes > MAX_PAYLOAD_LEN {
            return Err(LogError::InvalidOptions(
                "max_record_bytes exceeds the format's 1 GiB limit",
            ));
        }
        Ok(())
    }
}

/// A snapshot of the writer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records written since open.
    pub records: u64,
    /// Bytes written since open: frames, and headers of segments created
    /// by rollover.
    pub bytes: u64,
    /// Batches written (one write per segment touched, per batch).
    pub batches: u64,
    /// fdatasync calls made (per batch in `Fsync` mode, per rollover, at close).
    pub fsyncs: u64,
    /// The last LSN in the log (written before open or since), if any.
    pub last_lsn: Option<Lsn>,
}

/// State shared between the handle and the writer thread.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) records: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    /// 0 while the log is empty.
    pub(crate) last_lsn: AtomicU64,
    /// The first error the writer met; set once, never cleared.
    pub(crate) failure: OnceLock<Arc<LogError>>,
    /// Rung after each batch reaches the log.
    pub(crate) bell: OnceLock<LogBell>,
    closed: AtomicBool,
}

/// Opens capture logs for writing.
pub struct LogWriter;

impl LogWriter {
    /// Opens (creating if needed) the log in `dir`, recovers its tail, and
    /// starts the writer thread. Fails with [`LogError::Locked`] if another
    /// writer has the directory open.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<LogWriterHandle, LogError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(LogError::io("create directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let (recovery, tail) = recover(&dir)?;
        let shared = Arc::new(Shared::default());
        shared.last_lsn.store(recovery.next_lsn.0 - 1, Ordering::Relaxed);
        let capacity = options.queue_capacity;
        // One slot more than there are permits, for the shutdown request.
        let (tx, rx) = crossbeam_channel::bounded(capacity + 1);
        let durability = options.durability;
        let state = WriterThread::new(dir.clone(), options, tail, recovery.next_lsn, Arc::clone(&shared), lock);
        // `write` durability costs one write(2) per commit, which the caller
        // can afford to make itself: no thread hop, no wake-ups. `fsync`
        // batches commits on the writer thread (group commit).
        let (thread, inline) = if durability == Durability::Write {
            (None, Some(Mutex::new(Some(state))))
        } else {
            let thread = thread::Builder::new()
                .name("switchyard-log-writer".into())
                .spawn(move || state.run(rx))
                .map_err(LogError::io("spawn writer thread for", &dir))?;
            (Some(thread), None)
        };
        tracing::info!(dir = %dir.display(), next_lsn = recovery.next_lsn.0, segments = recovery.segments, "capture log opened");
        Ok(LogWriterHandle {
            inner: Arc::new(Inner {
                tx,
                permits: Arc::new(Semaphore::new(capacity)),
                shared,
                thread: Mutex::new(thread),
                inline,
                dir,
                recovery,
                flush_due: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}

/// A cloneable handle to a running log writer. The writer shuts down
/// (flushing, syncing and joining its thread) when the last clone is dropped
/// or when [`LogWriterHandle::close`] is called; both block until then.
#[derive(Clone)]
pub struct LogWriterHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogWriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriterHandle").field("dir", &self.inner.dir).finish()
    }
}

struct Inner {
    tx: Sender<Request>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<Result<(), LogError>>>>,
    /// With `write` durability the caller writes (see [`LogWriter::open`]).
    inline: Option<Mutex<Option<WriterThread>>>,
    dir: PathBuf,
    recovery: RecoveryReport,
    /// A `flush_deferred` is owed.
    flush_due: std::sync::atomic::AtomicBool,
}

impl LogWriterHandle {
    /// Appends a record; resolves to its LSN once it is written (and synced,
    /// per [`Durability`]). Suspends, never blocks, while the queue is full.
    /// The returned future owns what it needs, so it can be spawned. If it is
    /// dropped after the record was queued, the record is still written.
    pub fn append(&self, record: Record) -> impl Future<Output = Result<Lsn, LogError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            record.validate()?;
            inner.check_open()?;
            if let Some(inline) = &inner.inline {
                return inner.append_inline(inline, &record);
            }
            let permit = Arc::clone(&inner.permits)
                .acquire_owned()
                .await
                .map_err(|_| LogError::Closed)?;
            inner.check_open()?;
            let (ack, done) = oneshot::channel();
            inner
                .tx
                .try_send(Request::Append { record, ack, permit })
                .map_err(|e| match e {
                    // Cannot happen while permits match slots; refuse rather than block.
                    TrySendError::Full(_) => LogError::WriterGone,
                    TrySendError::Disconnected(_) => LogError::Closed,
                })?;
            // The writer drops the ack unanswered only when it exits.
            done.await.map_err(|_| inner.exit_error())?
        }
    }

    /// Appends a record nobody waits for, written with the next append or
    /// [`flush_deferred`](Self::flush_deferred), whichever comes first: with
    /// `write` durability this saves a write(2) per record under load. With
    /// a writer thread it is queued like any append (the thread batches).
    /// Returns true when the caller should see to a `flush_deferred` soon
    /// (none is due yet); false when one is already due or none is needed.
    pub fn append_deferred(&self, record: Record) -> bool {
        if record.validate().is_err() || self.inner.check_open().is_err() {
            return false;
        }
        let Some(inline) = &self.inner.inline else {
            let append = self.append(record);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = append.await {
                        tracing::error!(error = %e, "capture log write failed");
                    }
                });
            }
            return false;
        };
        let mut guard = inline.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = guard.as_mut() else { return false };
        let (ack, _done) = oneshot::channel();
        state.append(&record, ack);
        drop(guard);
        !self.inner.flush_due.swap(true, Ordering::AcqRel)
    }

    /// Writes what [`append_deferred`](Self::append_deferred) left pending.
    pub fn flush_deferred(&self) {
        self.inner.flush_due.store(false, Ordering::Release);
        if let Some(inline) = &self.inner.inline {
            if let Some(state) = inline.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                state.commit_batch();
            }
        }
    }

    /// [`append`](Self::append) for threads outside any async runtime (tools,
    /// tests). Blocks the calling thread; never call it from async code.
    pub fn append_blocking(&self, record: Record) -> Result<Lsn, LogError> {
        block_on(self.append(record))
    }

    /// Current counters.
    pub fn stats(&self) -> LogStats {
        let s = &self.inner.shared;
        let last = s.last_lsn.load(Ordering::Acquire);
        LogStats {
            records: s.records.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            last_lsn: (last > 0).then_some(Lsn(last)),
        }
    }

    /// Rings `bell` after every batch written from now on (and once now,
    /// with the last position already in the log), so that a reader of
    /// this log in the same process wakes when it grows. A handle has one
    /// bell; later calls are ignored.
    pub fn ring_on_write(&self, bell: LogBell) {
        let bell = self.inner.shared.bell.get_or_init(|| bell);
        bell.ring(self.inner.shared.last_lsn.load(Ordering::Acquire));
    }

    /// The bell this handle rings, if [`Self::ring_on_write`] gave it one.
    pub fn bell(&self) -> Option<LogBell> {
        self.inner.shared.bell.get().cloned()
    }

    /// What recovery found when the log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The error that put the writer in its failed state, if it has failed.
    pub fn failure(&self) -> Option<Arc<LogError>> {
        self.inner.shared.failure.get().cloned()
    }

    /// Stops the writer: records already queued are written, the segment is
    /// synced, the thread joined. Appends through other clones fail with
    /// [`LogError::Closed`] afterwards. Blocks; returns the writer's failure
    /// if it had one.
    pub fn close(self) -> Result<(), LogError> {
        self.inner.shutdown()
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), LogError> {
        if let Some(cause) = self.shared.failure.get() {
            return Err(LogError::WriterFailed(Arc::clone(cause)));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// Why an ack was dropped unanswered: the writer failed, was closed, or died.
    fn exit_error(&self) -> LogError {
        match self.check_open() {
            Err(e) => e,
            Ok(()) => LogError::WriterGone,
        }
    }

    /// Writes one record on the calling thread (durability `write`).
    fn append_inline(&self, inline: &Mutex<Option<WriterThread>>, record: &Record) -> Result<Lsn, LogError> {
        let mut guard = inline.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = guard.as_mut() else {
            return Err(LogError::Closed);
        };
        let (ack, mut done) = oneshot::channel();
        state.append(record, ack);
        state.commit_batch();
        match done.try_recv() {
            Ok(result) => result,
            Err(_) => Err(self.exit_error()),
        }
    }

    fn shutdown(&self) -> Result<(), LogError> {
        self.start_shutdown().wait()
    }

    /// Stops taking appends; what is left to wait for is returned.
    fn start_shutdown(&self) -> Closing {
        if let Some(inline) = &self.inline {
            self.shared.closed.store(true, Ordering::Release);
            self.permits.close();
            let state = inline.lock().unwrap_or_else(|p| p.into_inner()).take();
            return state.map_or(Closing::Done, Closing::Inline);
        }
        let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Closing::Done;
        };
        self.shared.closed.store(true, Ordering::Release);
        self.permits.close();
        // A slot is reserved for this request, and the thread only exits on
        // it, so the send neither blocks for long nor fails.
        let _ = self.tx.send(Request::Shutdown);
        Closing::Thread(thread)
    }
}

/// A writer shutting down: what it still has to do.
enum Closing {
    Done,
    /// The caller's writer: its last sync.
    Inline(WriterThread),
    /// The writer thread, told to stop: its exit.
    Thread(JoinHandle<Result<(), LogError>>),
}

impl Closing {
    /// Waits for the shutdown to finish (blocks).
    fn wait(self) -> Result<(), LogError> {
        match self {
            Closing::Done => Ok(()),
            Closing::Inline(state) => state.finish(),
            Closing::Thread(thread) => thread.join().unwrap_or(Err(LogError::WriterGone)),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut closing = self.start_shutdown();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if let Err(error) = closing.wait() {
                tracing::error!(dir = %self.dir.display(), %error, "capture log writer shut down with an error");
            }
            return;
        };
        // The last handle went on a runtime's thread (a session, a
        // capture stopping): the final fdatasync or the thread's join would
        // stall every task on it for milliseconds. Records still pending are
        // written here, and the rest goes to a blocking thread (should the
        // runtime stop before that runs, only the sync is skipped).
        if let Closing::Inline(state) = &mut closing {
            state.commit_batch();
        }
        let dir = self.dir.clone();
        runtime.spawn_blocking(move || {
            if let Err(error) = closing.wait() {
                tracing::error!(dir = %dir.display(), %error, "capture log writer shut down with an error");
            }
        });
    }
}

struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future to completion on the current thread, parking in between.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}
