//! The log writer's thread: drains the queue, encodes each batch into one
//! reusable buffer, writes it with one write per segment, syncs per policy,
//! then acknowledges every record of the batch (group commit).
//!
//! The first I/O error is final: every waiter of that batch and every later
//! append gets [`LogError::WriterFailed`]. Retrying after a failed fsync is
//! unsafe (the kernel may have dropped the dirty pages), so nothing retries;
//! reopening the log recovers it.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::error::LogError;
use super::frame::{begin_frame, finish_frame, FRAME_HEADER_LEN};
use super::recovery::{create_segment, TailSegment};
use super::writer::{Durability, LogOptions, Shared};
use super::{Lsn, Record};

/// Buffers grown past this by a huge record are shrunk back after the batch.
const BUFFER_KEEP: usize = 1 << 20;

/// What sessions send the writer thread.
pub(crate) enum Request {
    /// Log a record and report its LSN on `ack`.
    Append {
        record: Record,
        ack: oneshot::Sender<Result<Lsn, LogError>>,
        /// A queue slot, freed when the thread takes the request.
        permit: OwnedSemaphorePermit,
    },
    /// Finish what is queued before this, sync, and exit.
    Shutdown,
}

type Ack = oneshot::Sender<Result<Lsn, LogError>>;

pub(crate) struct WriterThread {
    dir: PathBuf,
    options: LogOptions,
    segment: TailSegment,
    next_lsn: Lsn,
    /// Encoded frames of the current batch not yet written to `segment`.
    pending: Vec<u8>,
    pending_records: u64,
    /// Scratch space for encoding one frame.
    frame: Vec<u8>,
    /// Waiters of the current batch, with their LSNs.
    acks: Vec<(Ack, Lsn)>,
    shared: Arc<Shared>,
    /// Holds the directory's flock until the thread exits.
    _lock: File,
}

impl WriterThread {
    pub(crate) fn new(
        dir: PathBuf,
        options: LogOptions,
        segment: TailSegment,
        next_lsn: Lsn,
        shared: Arc<Shared>,
        lock: File,
    ) -> Self {
        WriterThread {
            dir,
            options,
            segment,
            next_lsn,
            pending: Vec::with_capacity(64 * 1024),
            pending_records: 0,
            frame: Vec::with_capacity(4096),
            acks: Vec::new(),
            shared,
            _lock: lock,
        }
    }

    /// The thread's main loop; returns the writer's final status.
    pub(crate) fn run(mut self, rx: Receiver<Request>) -> Result<(), LogError> {
        let mut batch = Vec::new();
        loop {
            // All handles gone without a shutdown request cannot happen (the
            // last one sends it), but treat it as one.
            let Ok(first) = rx.recv() else {
                return self.finish();
            };
            batch.push(first);
            batch.extend(rx.try_iter());
            let mut shutdown = false;
            for request in batch.drain(..) {
                match request {
                    Request::Append { record, ack, permit } => {
                        drop(permit);
                        self.append(&record, ack);
                    }
                    Request::Shutdown => shutdown = true,
                }
            }
            self.commit_batch();
            if shutdown {
                return self.finish();
            }
        }
    }

    /// Encodes one record into the batch; acks it later, or now on error.
    pub(crate) fn append(&mut self, record: &Record, ack: Ack) {
        if let Some(cause) = self.shared.failure.get() {
            let _ = ack.send(Err(LogError::WriterFailed(Arc::clone(cause))));
            return;
        }
        let lsn = self.next_lsn;
        self.frame.clear();
        let start = begin_frame(&mut self.frame);
        record.encode_payload(lsn, &mut self.frame);
        let size = self.frame.len() - FRAME_HEADER_LEN;
        if size > self.options.max_record_bytes as usize {
            let limit = self.options.max_record_bytes;
            let _ = ack.send(Err(LogError::RecordTooLarge { size, limit }));
            return;
        }
        finish_frame(&mut self.frame, start);
        let records = self.segment.records + self.pending_records;
        let would_be = self.segment.len + (self.pending.len() + self.frame.len()) as u64;
        if records > 0 && would_be > self.options.segment_size {
            if let Err(e) = self.roll_over(lsn) {
                self.fail(e);
                let _ = ack.send(Err(self.failed_error()));
                return;
            }
        }
        self.pending.extend_from_slice(&self.frame);
        self.pending_records += 1;
        self.next_lsn = lsn.next();
        self.acks.push((ack, lsn));
    }

    /// Writes the pending bytes of the current segment, syncs it,
    /// and starts a new segment whose first record is `first`.
    fn roll_over(&mut self, first: Lsn) -> Result<(), LogError> {
        self.write_pending()?;
        // Sync before the next segment exists, whatever the durability
        // policy (it costs one fdatasync per segment), so that only the
        // newest segment can ever have a torn tail, even after a machine
        // crash in `Durability::Write` mode.
        self.sync()?;
        let segment = create_segment(&self.dir, first)?;
        self.shared.bytes.fetch_add(segment.len, Ordering::Relaxed);
        tracing::debug!(segment = %segment.path.display(), first_lsn = first.0, "capture log rolled over");
        self.segment = segment;
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seg = &mut self.segment;
        seg.file
            .write_all(&self.pending)
            .map_err(LogError::io("write", &seg.path))?;
        seg.len += self.pending.len() as u64;
        seg.records += self.pending_records;
        self.shared
            .bytes
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        self.shared.records.fetch_add(self.pending_records, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.pending.clear();
        self.pending_records = 0;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let seg = &self.segment;
        seg.file.sync_data().map_err(LogError::io("fsync", &seg.path))?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes and syncs what the batch encoded, then acknowledges it.
    pub(crate) fn commit_batch(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let mut result = self.write_pending();
        if result.is_ok() && self.options.durability == Durability::Fsync {
            result = self.sync();
        }
        match result {
            Ok(()) => {
                let last = self.next_lsn.0 - 1;
                self.shared.last_lsn.store(last, Ordering::Release);
                for (ack, lsn) in self.acks.drain(..) {
                    // A waiter that went away still had its record logged.
                    let _ = ack.send(Ok(lsn));
                }
                if let Some(bell) = self.shared.bell.get() {
                    bell.ring(last);
                }
            }
            Err(e) => self.fail(e),
        }
        if self.pending.capacity() > BUFFER_KEEP {
            self.pending.shrink_to(BUFFER_KEEP);
        }
        if self.frame.capacity() > BUFFER_KEEP {
            self.frame.shrink_to(BUFFER_KEEP);
        }
    }

    /// Enters the failed state: reports `error` to every waiter of the batch.
    fn fail(&mut self, error: LogError) {
        tracing::error!(dir = %self.dir.display(), %error, "capture log writer failed; refusing further appends");
        let cause = Arc::clone(self.shared.failure.get_or_init(|| Arc::new(error)));
        // Best effort: drop a partial write so the file ends on a record
        // boundary. Recovery would cut it anyway.
        let _ = self.segment.file.set_len(self.segment.len);
        self.pending.clear();
        self.pending_records = 0;
        for (ack, _) in self.acks.drain(..) {
            let _ = ack.send(Err(LogError::WriterFailed(Arc::clone(&cause))));
        }
    }

    fn failed_error(&self) -> LogError {
        match self.shared.failure.get() {
            Some(cause) => LogError::WriterFailed(Arc::clone(cause)),
            None => LogError::WriterGone,
        }
    }

    /// Clean exit: sync what was written, report the writer's status.
    pub(crate) fn finish(mut self) -> Result<(), LogError> {
        if let Some(cause) = self.shared.failure.get() {
            return Err(LogError::WriterFailed(Arc::clone(cause)));
        }
        // Deferred appends not written yet.
        self.commit_batch();
        if let Some(cause) = self.shared.failure.get() {
            return Err(LogError::WriterFailed(Arc::clone(cause)));
        }
        self.sync()?;
        tracing::info!(dir = %self.dir.display(), last_lsn = self.next_lsn.0 - 1, "capture log writer closed");
        Ok(())
    }
}
