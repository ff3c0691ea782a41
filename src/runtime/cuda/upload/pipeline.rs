//! The staged copy pipeline: the tensor bytes are cut into chunks that cycle through a ring of
//! pinned staging buffers. Host threads fill a buffer (memcpy from the mapping, or positioned reads
//! of the file) while the device copies the previous ones. The device side sits behind [`Sink`],
//! so the scheduling is tested on the host with a sink that copies as late as it may.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use cudarc::driver::{result as dr, sys as ds};
use rayon::prelude::*;

use crate::runtime::cuda::{CudaError, CudaRuntime};

/// How host threads and device copies are scheduled in a staged upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// One chunk at a time: all threads fill the chunk (fork-join), then its copy is queued.
    PerChunk,
    /// Threads take pieces in file order without a barrier per chunk; whichever thread completes
    /// a chunk queues its copy.
    Stream,
}

/// Chunking of a staged upload (see [`super::UploadMethod::Staged`] and
/// [`super::UploadMethod::Pread`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StagingConfig {
    /// Bytes per device copy (one staging buffer's worth; the largest chunk with a ramp).
    pub chunk: usize,
    /// Pinned staging buffers in the ring (capped at the number of chunks).
    pub buffers: usize,
    /// Bytes one host thread fills at a time; 0 picks `chunk / threads` (64 KiB at least) for
    /// each chunk's own size.
    pub piece: usize,
    /// How threads and copies are scheduled.
    pub schedule: Schedule,
    /// Size of the first chunk of a ramp: chunks start at this size and double up to `chunk`
    /// (`1M` to `16M`: 1, 2, 4, 8, 16, 16, ... MiB), so the first device copy starts early while
    /// later copies are large. 0, or a size of at least `chunk`, means no ramp.
    pub first_chunk: usize,
    /// Staging buffers allocated write-combined: the host never reads them, and stores to them
    /// bypass the caches (no read of each line before it is written), which leaves the host's
    /// memory bandwidth to the reads of the source and the device's copies.
    pub write_combined: bool,
}

impl Default for StagingConfig {
    /// Eight 4 MiB buffers, pieces split evenly among the threads, no per-chunk wait: the fastest
    /// configuration of the upload sweep (bench/RESULTS.md, "Upload").
    fn default() -> Self {
        Self::new(4 << 20, 8, 0, Schedule::Stream)
    }
}

impl StagingConfig {
    /// A configuration without a ramp.
    pub const fn new(chunk: usize, buffers: usize, piece: usize, schedule: Schedule) -> Self {
        Self {
            chunk,
            buffers,
            piece,
            schedule,
            first_chunk: 0,
            write_combined: false,
        }
    }

    /// This configuration with write-combined staging buffers.
    pub const fn write_combined(self) -> Self {
        Self {
            write_combined: true,
            ..self
        }
    }

    /// This configuration with chunks ramping up from `first_chunk` bytes (0: no ramp).
    pub const fn with_ramp(self, first_chunk: usize) -> Self {
        Self {
            first_chunk,
            ..self
        }
    }

    /// Short label such as `4M x8 p=auto stream` or `16M x6 ramp 1M p=auto stream`.
    pub fn label(&self) -> String {
        let piece = if self.piece == 0 {
            "auto".to_string()
        } else {
            size_label(self.piece)
        };
        let sched = match self.schedule {
            Schedule::PerChunk => "per-chunk",
            Schedule::Stream => "stream",
        };
        let ramp = if self.first_chunk > 0 && self.first_chunk < self.chunk {
            format!(" ramp {}", size_label(self.first_chunk))
        } else {
            String::new()
        };
        let wc = if self.write_combined { " wc" } else { "" };
        format!(
            "{} x{}{ramp} p={piece} {sched}{wc}",
            size_label(self.chunk),
            self.buffers
        )
    }
}

fn size_label(b: usize) -> String {
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{}M", b >> 20)
    } else if b >= 1 << 10 && b % (1 << 10) == 0 {
        format!("{}K", b >> 10)
    } else {
        format!("{b}B")
    }
}

const MAX_CHUNK: usize = 1 << 30;
const MAX_BUFFERS: usize = 64;
const MIN_AUTO_PIECE: usize = 64 << 10;

/// One piece of the region: what a thread fills at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Chunk holding the piece.
    pub chunk: usize,
    /// Staging buffer of that chunk.
    pub buffer: usize,
    /// Offset in the region.
    pub at: usize,
    /// Offset in the staging buffer.
    pub in_buffer: usize,
    /// Bytes.
    pub len: usize,
}

/// The cut of a region into chunks (one device copy each) and pieces (one fill each).
///
/// Without a ramp every chunk is `chunk` bytes. With one, chunk `j < ramp` is `first << j` bytes
/// (starting at `(first << j) - first`) and the later chunks are `chunk` bytes; the last chunk is
/// cut at the region's end. Piece slots are numbered in file order: the ramp chunks' slots first,
/// then `per_chunk` slots per full-size chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Region bytes.
    pub len: usize,
    /// Bytes of a full-size chunk (the largest; every staging buffer holds one).
    pub chunk: usize,
    /// Buffers used (at most the number of chunks, at least one).
    pub buffers: usize,
    /// Piece bytes of a full-size chunk (the largest piece).
    pub piece: usize,
    /// Piece slots per full-size chunk (the last chunk may use fewer).
    pub per_chunk: usize,
    /// Chunks.
    pub chunks: usize,
    /// First ramp chunk's bytes (0: no ramp).
    pub first: usize,
    /// Ramp chunks before the full-size ones (sizes `first << j`, all below `chunk`).
    pub ramp: usize,
    /// Piece bytes asked for (0: automatic).
    asked_piece: usize,
    /// Threads that size automatic pieces.
    threads: usize,
}

/// Piece bytes for a chunk of `chunk` bytes: `asked`, or (0) an even split among `threads`.
fn piece_size(chunk: usize, asked: usize, threads: usize) -> usize {
    if asked == 0 {
        chunk
            .div_ceil(threads.max(1))
            .next_multiple_of(4096)
            .max(MIN_AUTO_PIECE)
            .min(chunk)
    } else {
        asked.min(chunk)
    }
    .max(1)
}

impl Plan {
    /// Plans `len` bytes with `cfg`; `threads` sizes automatic pieces.
    pub fn new(len: usize, cfg: &StagingConfig, threads: usize) -> Result<Self, CudaError> {
        if cfg.chunk == 0 || cfg.chunk > MAX_CHUNK {
            return Err(CudaError::Invalid(format!(
                "staging chunk of {} bytes (allowed 1..={MAX_CHUNK})",
                cfg.chunk
            )));
        }
        if cfg.buffers == 0 || cfg.buffers > MAX_BUFFERS {
            return Err(CudaError::Invalid(format!(
                "{} staging buffers (allowed 1..={MAX_BUFFERS})",
                cfg.buffers
            )));
        }
        let first = if cfg.first_chunk < cfg.chunk {
            cfg.first_chunk
        } else {
            0
        };
        // Ramp chunks: sizes first << j below chunk (at most log2(MAX_CHUNK) of them).
        let mut ramp = 0;
        while first > 0 && (first << ramp) < cfg.chunk {
            ramp += 1;
        }
        let ramp_bytes = if first > 0 {
            (first << ramp) - first
        } else {
            0
        };
        let chunks = if len <= ramp_bytes {
            // Fewest ramp chunks whose total (first << k) - first reaches len.
            (0..=ramp)
                .find(|&k| (first << k) - first >= len)
                .unwrap_or(ramp)
        } else {
            ramp + (len - ramp_bytes).div_ceil(cfg.chunk)
        };
        let piece = piece_size(cfg.chunk, cfg.piece, threads);
        Ok(Plan {
            len,
            chunk: cfg.chunk,
            buffers: cfg.buffers.min(chunks).max(1),
            piece,
            per_chunk: cfg.chunk.div_ceil(piece),
            chunks,
            first,
            ramp,
            asked_piece: cfg.piece,
            threads,
        })
    }

    /// Start and size of chunk `i` before the cut at the region's end.
    fn nominal(&self, i: usize) -> (usize, usize) {
        if i < self.ramp {
            ((self.first << i) - self.first, self.first << i)
        } else {
            let ramp_bytes = (self.first << self.ramp) - self.first;
            let start = (i - self.ramp)
                .saturating_mul(self.chunk)
                .saturating_add(ramp_bytes);
            (start, self.chunk)
        }
    }

    /// Byte range of chunk `i` in the region.
    pub fn chunk_range(&self, i: usize) -> Range<usize> {
        let (s, n) = self.nominal(i);
        let s = s.min(self.len);
        s..s.saturating_add(n).min(self.len)
    }

    /// Piece bytes of chunk `i` (automatic pieces split each chunk among the threads).
    pub fn piece_of(&self, i: usize) -> usize {
        if i < self.ramp {
            piece_size(self.first << i, self.asked_piece, self.threads)
        } else {
            self.piece
        }
    }

    /// Piece slots of chunk `i` (its full size's worth; a cut last chunk leaves some empty).
    fn slots_of(&self, i: usize) -> usize {
        if i < self.ramp {
            (self.first << i).div_ceil(self.piece_of(i))
        } else {
            self.per_chunk
        }
    }

    /// Pieces of chunk `i`.
    pub fn pieces_in(&self, i: usize) -> usize {
        self.chunk_range(i).len().div_ceil(self.piece_of(i))
    }

    /// Piece slots (some slots of the last chunk are empty).
    pub fn slots(&self) -> usize {
        let ramp = self.chunks.min(self.ramp);
        let ramp_slots: usize = (0..ramp).map(|j| self.slots_of(j)).sum();
        ramp_slots + (self.chunks - ramp) * self.per_chunk
    }

    /// The piece in slot `slot`, or `None` for an empty slot.
    pub fn piece(&self, slot: usize) -> Option<Piece> {
        let (mut chunk, mut k) = (0, slot);
        while chunk < self.ramp && k >= self.slots_of(chunk) {
            k -= self.slots_of(chunk);
            chunk += 1;
        }
        if chunk >= self.ramp {
            chunk += k / self.per_chunk;
            k %= self.per_chunk;
        }
        if chunk >= self.chunks {
            return None;
        }
        let r = self.chunk_range(chunk);
        let p = self.piece_of(chunk);
        let at = r.start + k * p;
        (at < r.end).then(|| Piece {
            chunk,
            buffer: chunk % self.buffers,
            at,
            in_buffer: k * p,
            len: (at + p).min(r.end) - at,
        })
    }
}

/// Where the region's bytes come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// The mapped bytes of the region.
    Map(&'a [u8]),
    /// Positioned reads: the region is `len` bytes at `offset` of `file`.
    File {
        /// The open file.
        file: &'a File,
        /// Region start in the file.
        offset: u64,
        /// Region bytes.
        len: usize,
    },
}

impl Source<'_> {
    /// Region bytes.
    pub fn len(&self) -> usize {
        match self {
            Source::Map(b) => b.len(),
            Source::File { len, .. } => *len,
        }
    }

    /// Fills `dst` with the region's bytes from offset `at`.
    pub fn fill(&self, dst: &mut [u8], at: usize) -> Result<(), CudaError> {
        let end = at
            .checked_add(dst.len())
            .filter(|&e| e <= self.len())
            .ok_or_else(|| {
                CudaError::Invalid(format!(
                    "staged copy of {} bytes at {at} past the {}-byte region",
                    dst.len(),
                    self.len()
                ))
            })?;
        match self {
            Source::Map(src) => {
                let s = src.get(at..end).ok_or_else(|| {
                    CudaError::Invalid(format!("region bytes {at}..{end} missing"))
                })?;
                dst.copy_from_slice(s);
                Ok(())
            }
            Source::File { file, offset, .. } => {
                let pos = offset + at as u64;
                // read_exact_at retries short and interrupted reads; a file shorter than the
                // region is an UnexpectedEof error.
                file.read_exact_at(dst, pos).map_err(|e| {
                    CudaError::Invalid(format!(
                        "reading {} bytes of the model file at byte {pos}: {e}",
                        dst.len()
                    ))
                })
            }
        }
    }
}

/// The device side of the pipeline.
pub(crate) trait Sink: Sync {
    /// Called once by each thread that may call `submit` or `wait` (binds the device context).
    fn enter(&self) -> Result<(), CudaError>;

    /// Queues the copy of `len` bytes at `src` (staging buffer `buffer`) to region offset `at`.
    ///
    /// # Safety
    /// `src..src+len` must stay valid and unchanged until a later `wait(buffer)` returns.
    unsafe fn submit(
        &self,
        buffer: usize,
        src: *const u8,
        at: usize,
        len: usize,
    ) -> Result<(), CudaError>;

    /// Blocks until the copy last queued from `buffer` no longer reads it.
    fn wait(&self, buffer: usize) -> Result<(), CudaError>;
}

/// Runs the copy of `source` through `bufs` (each at least `plan.chunk` bytes) into `sink`. The
/// caller waits for the sink's last copies.
pub(crate) fn run<S: Sink>(
    plan: &Plan,
    source: Source<'_>,
    bufs: &mut [&mut [u8]],
    sink: &S,
    schedule: Schedule,
) -> Result<(), CudaError> {
    if source.len() != plan.len {
        return Err(CudaError::Invalid(format!(
            "staging plan for {} bytes used on a {}-byte region",
            plan.len,
            source.len()
        )));
    }
    if bufs.len() < plan.buffers || bufs.iter().any(|b| b.len() < plan.chunk) {
        return Err(CudaError::Invalid(format!(
            "staging needs {} buffers of {} bytes",
            plan.buffers, plan.chunk
        )));
    }
    if plan.chunks == 0 {
        return Ok(());
    }
    match schedule {
        Schedule::PerChunk => per_chunk(plan, source, bufs, sink),
        Schedule::Stream => Stream::new(plan, source, bufs, sink).run(),
    }
}

fn per_chunk<S: Sink>(
    plan: &Plan,
    source: Source<'_>,
    bufs: &mut [&mut [u8]],
    sink: &S,
) -> Result<(), CudaError> {
    sink.enter()?;
    for i in 0..plan.chunks {
        let b = i % plan.buffers;
        if i >= plan.buffers {
            sink.wait(b)?;
        }
        let r = plan.chunk_range(i);
        let buf = bufs
            .get_mut(b)
            .and_then(|x| x.get_mut(..r.len()))
            .ok_or_else(|| CudaError::Invalid("staging buffer too small".into()))?;
        // Several threads fill the buffer (one thread's copy is far below the link).
        let piece = plan.piece_of(i);
        buf.par_chunks_mut(piece)
            .enumerate()
            .try_for_each(|(k, d)| source.fill(d, r.start + k * piece))?;
        // SAFETY: buffer b is written again only after the wait(b) above in a later iteration.
        unsafe { sink.submit(b, buf.as_ptr(), r.start, r.len()) }?;
    }
    Ok(())
}

/// A staging buffer's base address, shared by the threads of a [`Stream`].
#[derive(Clone, Copy)]
struct Base(*mut u8);

// SAFETY: threads write disjoint pieces of the buffers; the schedule orders every write after the
// device copy that last read the same bytes (see `Stream::wait_free`).
unsafe impl Send for Base {}
// SAFETY: as above.
unsafe impl Sync for Base {}

/// Shared state of the barrier-free schedule.
struct Stream<'a, S> {
    plan: Plan,
    source: Source<'a>,
    sink: &'a S,
    bases: Vec<Base>,
    /// Next piece slot to take.
    next: AtomicUsize,
    /// Pieces filled, per chunk.
    done: Vec<AtomicUsize>,
    /// Chunks whose copy is queued (only written under `lock`).
    submitted: AtomicUsize,
    /// Per buffer: ring generations known to be copied (chunk i is generation i / buffers).
    freed: Vec<AtomicUsize>,
    lock: AtomicBool,
    failed: AtomicBool,
    error: Mutex<Option<CudaError>>,
}

fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl<'a, S: Sink> Stream<'a, S> {
    fn new(plan: &Plan, source: Source<'a>, bufs: &'a mut [&mut [u8]], sink: &'a S) -> Self {
        Stream {
            plan: *plan,
            source,
            sink,
            bases: bufs.iter_mut().map(|b| Base(b.as_mut_ptr())).collect(),
            next: AtomicUsize::new(0),
            done: (0..plan.chunks).map(|_| AtomicUsize::new(0)).collect(),
            submitted: AtomicUsize::new(0),
            freed: (0..plan.buffers).map(|_| AtomicUsize::new(0)).collect(),
            lock: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    fn run(self) -> Result<(), CudaError> {
        // Every pool thread takes part; one that starts late finds no work and leaves. The
        // schedule needs no particular number of threads (one thread submits its own chunks).
        rayon::broadcast(|_| {
            if let Err(e) = self.work() {
                self.fail(e);
            }
        });
        let chunks = self.plan.chunks;
        let n = self.submitted.load(Ordering::SeqCst);
        if let Some(e) = self.error.into_inner().ok().flatten() {
            return Err(e);
        }
        if n != chunks {
            return Err(CudaError::Invalid(format!(
                "staged copy stopped after {n} of {chunks} chunks"
            )));
        }
        Ok(())
    }

    fn fail(&self, e: CudaError) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn work(&self) -> Result<(), CudaError> {
        self.sink.enter()?;
        let slots = self.plan.slots();
        loop {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let slot = self.next.fetch_add(1, Ordering::Relaxed);
            if slot >= slots {
                break;
            }
            let Some(p) = self.plan.piece(slot) else {
                continue;
            };
            if !self.wait_free(p.chunk)? {
                return Ok(());
            }
            let base = self
                .bases
                .get(p.buffer)
                .ok_or_else(|| CudaError::Invalid("staging buffer missing".into()))?;
            // SAFETY: `run` checked that every buffer holds `plan.chunk` bytes and the piece lies
            // inside its chunk. The slot is taken once; the same bytes of the chunk before it in
            // this buffer were copied (wait_free), and this chunk is not copied before all its
            // pieces are done, so nothing else reads or writes this range now.
            let dst = unsafe { std::slice::from_raw_parts_mut(base.0.add(p.in_buffer), p.len) };
            self.source.fill(dst, p.at)?;
            self.done[p.chunk].fetch_add(1, Ordering::SeqCst);
            self.try_submit()?;
        }
        // All pieces are taken: help until every chunk is queued.
        let mut spins = 0;
        while self.submitted.load(Ordering::SeqCst) < self.plan.chunks {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.try_submit()?;
            backoff(&mut spins);
        }
        Ok(())
    }

    /// Waits until chunk `i` may write its buffer (the buffer's previous chunk was copied).
    /// Returns false when another thread failed.
    fn wait_free(&self, i: usize) -> Result<bool, CudaError> {
        let nb = self.plan.buffers;
        if i < nb {
            return Ok(true);
        }
        let (b, generation) = (i % nb, i / nb);
        if self.freed[b].load(Ordering::Acquire) >= generation {
            return Ok(true);
        }
        let mut spins = 0;
        // The previous user of the buffer, chunk i - nb, must be queued before its copy can be
        // waited for; its pieces were all taken before this one, so this ends.
        while self.submitted.load(Ordering::SeqCst) <= i - nb {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.try_submit()?;
            backoff(&mut spins);
        }
        // The buffer's last queued copy is chunk i - nb's: chunk i cannot be queued yet.
        self.sink.wait(b)?;
        self.freed[b].fetch_max(generation, Ordering::AcqRel);
        Ok(true)
    }

    /// Queues the copies of completed chunks in order, unless another thread is doing so.
    fn try_submit(&self) -> Result<(), CudaError> {
        loop {
            if self
                .lock
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                // The holder re-checks after releasing (SeqCst orders this thread's `done`
                // increment before the holder's check), so no completed chunk is left waiting.
                return Ok(());
            }
            let r = self.submit_ready();
            self.lock.store(false, Ordering::SeqCst);
            r?;
            if !self.next_ready() {
                return Ok(());
            }
        }
    }

    fn next_ready(&self) -> bool {
        let i = self.submitted.load(Ordering::SeqCst);
        i < self.plan.chunks && self.done[i].load(Ordering::SeqCst) >= self.plan.pieces_in(i)
    }

    fn submit_ready(&self) -> Result<(), CudaError> {
        while self.next_ready() {
            let i = self.submitted.load(Ordering::SeqCst);
            let r = self.plan.chunk_range(i);
            let b = i % self.plan.buffers;
            let base = self
                .bases
                .get(b)
                .ok_or_else(|| CudaError::Invalid("staging buffer missing".into()))?;
            // SAFETY: every piece of chunk i is written (acquired through `done`); the buffer is
            // written next by chunk i + buffers, whose pieces wait for this copy (wait_free).
            unsafe { self.sink.submit(b, base.0, r.start, r.len()) }?;
            self.submitted.store(i + 1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// An event handle shared by the pipeline's threads.
struct Event(ds::CUevent);

// SAFETY: an event is an opaque driver handle; the driver API is thread-safe and every thread
// using it binds the context first (`Sink::enter`).
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

/// Copies to device memory on the runtime's stream, one event per staging buffer.
pub(crate) struct DeviceSink<'a> {
    rt: &'a CudaRuntime,
    dst: u64,
    events: Vec<Event>,
}

impl<'a> DeviceSink<'a> {
    /// A sink writing the region to device address `dst`, for `buffers` staging buffers.
    pub fn new(rt: &'a CudaRuntime, dst: u64, buffers: usize) -> Result<Self, CudaError> {
        rt.bind()?;
        let mut sink = DeviceSink {
            rt,
            dst,
            events: Vec::with_capacity(buffers),
        };
        for _ in 0..buffers {
            let ev = dr::event::create(ds::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(CudaError::driver("event"))?;
            sink.events.push(Event(ev));
        }
        Ok(sink)
    }

    fn event(&self, buffer: usize) -> Result<ds::CUevent, CudaError> {
        self.events
            .get(buffer)
            .map(|e| e.0)
            .ok_or_else(|| CudaError::Invalid(format!("no event for staging buffer {buffer}")))
    }
}

impl Sink for DeviceSink<'_> {
    fn enter(&self) -> Result<(), CudaError> {
        self.rt.bind()
    }

    unsafe fn submit(
        &self,
        buffer: usize,
        src: *const u8,
        at: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        let ev = self.event(buffer)?;
        // SAFETY: src is pinned staging memory left unchanged until wait(buffer) (the caller's
        // contract); the destination allocation holds the whole region.
        unsafe { self.rt.copy_h2d_async(self.dst + at as u64, src, len) }?;
        // SAFETY: event and stream belong to the bound context.
        unsafe { dr::event::record(ev, self.rt.stream().cu_stream()) }
            .map_err(CudaError::driver("event record"))
    }

    fn wait(&self, buffer: usize) -> Result<(), CudaError> {
        let ev = self.event(buffer)?;
        // SAFETY: the event is alive until the sink drops.
        unsafe { dr::event::synchronize(ev) }.map_err(CudaError::driver("event synchronize"))
    }
}

impl Drop for DeviceSink<'_> {
    fn drop(&mut self) {
        if self.rt.bind().is_ok() {
            for ev in &self.events {
                // SAFETY: created in `new`, destroyed once; the driver defers the release of an
                // event whose work is still pending.
                let _ = unsafe { dr::event::destroy(ev.0) };
            }
        }
    }
}

/// A sink that copies nothing: measures the host side alone.
pub(crate) struct NullSink;

impl Sink for NullSink {
    fn enter(&self) -> Result<(), CudaError> {
        Ok(())
    }
    unsafe fn submit(&self, _: usize, _: *const u8, _: usize, _: usize) -> Result<(), CudaError> {
        Ok(())
    }
    fn wait(&self, _: usize) -> Result<(), CudaError> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
