//! Host-only tests of the staging plan and of both schedules, with a sink that copies at the
//! earliest or the latest moment the protocol allows.

use std::io::Write;
use std::sync::Mutex;

use super::*;
use ets_testkit::rng::{test_rng, Rng};

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// Chunk sizes by the ramp's definition, independent of `Plan`: start at `first` (or `chunk`
/// without a ramp), double up to `chunk`, cut the last one at the region's end.
fn reference_chunks(len: usize, chunk: usize, first: usize) -> Vec<usize> {
    let mut size = if first == 0 { chunk } else { first.min(chunk) };
    let (mut left, mut out) = (len, Vec::new());
    while left > 0 {
        let n = size.min(left);
        out.push(n);
        left -= n;
        size = (size * 2).min(chunk);
    }
    out
}

fn random_ramp(rng: &mut Rng, chunk: usize) -> usize {
    match below(rng, 4) {
        0 => 0,
        1 => 1 + below(rng, chunk),
        2 => (chunk >> (1 + below(rng, 6))).max(1),
        _ => chunk + below(rng, 3),
    }
}

#[test]
fn plan_covers_the_region_once_in_order() {
    let mut rng = test_rng("plan_covers_the_region_once_in_order");
    for _ in 0..400 {
        let chunk = [1usize, 7, 4096, 65536, 1 << 20][below(&mut rng, 5)] + below(&mut rng, 3);
        let len = match below(&mut rng, 4) {
            0 => 0,
            1 => chunk * below(&mut rng, 5),
            _ => below(&mut rng, chunk * 9 + 2),
        };
        let cfg = StagingConfig {
            chunk,
            buffers: 1 + below(&mut rng, 9),
            piece: [0, 1, 3, 4096, 1 << 16, 1 << 22][below(&mut rng, 6)],
            schedule: Schedule::Stream,
            first_chunk: random_ramp(&mut rng, chunk),
            write_combined: false,
        };
        let threads = 1 + below(&mut rng, 32);
        let plan = Plan::new(len, &cfg, threads).expect("valid config");
        let sizes = reference_chunks(len, chunk, cfg.first_chunk);
        assert_eq!(plan.chunks, sizes.len(), "{cfg:?}, len {len}");
        let mut start = 0;
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(
                plan.chunk_range(i),
                start..start + n,
                "chunk {i} of {cfg:?}"
            );
            start += n;
        }
        assert!(plan.buffers >= 1 && plan.buffers <= cfg.buffers);
        assert!(plan.piece >= 1 && plan.piece <= chunk);
        let mut pos = 0;
        let mut per_chunk = vec![0usize; plan.chunks];
        for slot in 0..plan.slots() {
            let Some(p) = plan.piece(slot) else { continue };
            assert_eq!(
                p.at, pos,
                "pieces in file order without gaps ({cfg:?}, len {len})"
            );
            assert!(p.len >= 1 && p.len <= plan.piece);
            let r = plan.chunk_range(p.chunk);
            assert!(r.start <= p.at && p.at + p.len <= r.end);
            assert_eq!(p.in_buffer, p.at - r.start);
            assert!(p.in_buffer + p.len <= plan.chunk);
            assert_eq!(p.buffer, p.chunk % plan.buffers);
            per_chunk[p.chunk] += 1;
            pos += p.len;
        }
        assert_eq!(pos, len, "pieces cover the region ({cfg:?})");
        for (i, &n) in per_chunk.iter().enumerate() {
            assert_eq!(n, plan.pieces_in(i));
            assert!(n >= 1, "chunk {i} has no piece ({cfg:?})");
        }
        assert!(plan.piece(plan.slots()).is_none());
    }
}

#[test]
fn plan_rejects_bad_configs_and_sizes_auto_pieces() {
    for cfg in [
        StagingConfig::new(0, 4, 0, Schedule::PerChunk),
        StagingConfig::new(1 << 20, 0, 0, Schedule::PerChunk),
        StagingConfig::new(1 << 20, 65, 0, Schedule::Stream),
        StagingConfig::new((1 << 30) + 1, 4, 0, Schedule::Stream),
    ] {
        assert!(Plan::new(100, &cfg, 4).is_err(), "{cfg:?} must be refused");
    }
    let auto = |chunk, threads| {
        Plan::new(
            1 << 30,
            &StagingConfig::new(chunk, 4, 0, Schedule::Stream),
            threads,
        )
        .map(|p| p.piece)
        .ok()
    };
    assert_eq!(auto(16 << 20, 16), Some(1 << 20));
    assert_eq!(auto(16 << 20, 1000), Some(64 << 10));
    assert_eq!(auto(1000, 3), Some(1000));
    assert_eq!(auto(3 << 20, 16), Some(196_608)); // 3 MiB / 16 rounded up to 4 KiB
    let p = Plan::new(10, &StagingConfig::default(), 16).ok();
    assert_eq!(p.map(|p| (p.chunks, p.buffers)), Some((1, 1)));
    assert_eq!(StagingConfig::default().label(), "4M x8 p=auto stream");
    assert_eq!(
        StagingConfig::new(16 << 20, 4, 1 << 20, Schedule::PerChunk).label(),
        "16M x4 p=1M per-chunk"
    );
    assert_eq!(
        StagingConfig::new(1536 << 10, 8, 0, Schedule::Stream).label(),
        "1536K x8 p=auto stream"
    );
}

#[test]
fn a_ramp_doubles_up_to_the_chunk_and_splits_each_chunk_among_the_threads() {
    const M: usize = 1 << 20;
    let cfg = StagingConfig::new(16 * M, 6, 0, Schedule::Stream).with_ramp(M);
    assert_eq!(cfg.label(), "16M x6 ramp 1M p=auto stream");
    let len = 85 * M + 12345;
    let plan = Plan::new(len, &cfg, 16).expect("plan");
    let sizes: Vec<usize> = (0..plan.chunks)
        .map(|i| plan.chunk_range(i).len())
        .collect();
    let mut want = vec![M, 2 * M, 4 * M, 8 * M];
    want.extend([16 * M; 4]);
    want.push(len - 79 * M);
    assert_eq!(sizes, want);
    // Automatic pieces: each chunk split among 16 threads (64 KiB at least).
    let pieces: Vec<usize> = (0..plan.chunks).map(|i| plan.piece_of(i)).collect();
    assert_eq!(pieces[..5], [64 << 10, 128 << 10, 256 << 10, 512 << 10, M]);
    assert_eq!(plan.pieces_in(0), 16);
    // An explicit piece is used as is, capped at each chunk.
    let fixed = StagingConfig {
        piece: M,
        first_chunk: M / 2,
        ..cfg
    };
    let fixed = Plan::new(len, &fixed, 16).expect("plan");
    assert_eq!(fixed.piece_of(0), M / 2);
    assert_eq!(fixed.piece_of(1), M);
    assert_eq!(fixed.pieces_in(5), 16);
    // Chunk i lands in buffer i % buffers.
    for slot in 0..plan.slots() {
        if let Some(p) = plan.piece(slot) {
            assert_eq!(p.buffer, p.chunk % 6);
        }
    }
    // A region inside the ramp, one at a ramp boundary, and no ramp when first >= chunk.
    let small = Plan::new(3 * M + 1, &cfg, 16).expect("plan");
    assert_eq!((small.chunks, small.buffers), (3, 3));
    assert_eq!(small.chunk_range(2), 3 * M..3 * M + 1);
    let edge = Plan::new(15 * M, &cfg, 16).expect("plan");
    assert_eq!(edge.chunks, 4);
    let flat = cfg.with_ramp(16 * M);
    assert_eq!(flat.label(), "16M x6 p=auto stream");
    assert_eq!(Plan::new(len, &flat, 16).map(|p| p.chunks).ok(), Some(6));
    assert_eq!(Plan::new(0, &cfg, 16).map(|p| p.slots()).ok(), Some(0));
}

/// When the mock device reads a queued copy's source.
#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    /// At `submit`: catches a chunk queued before all its pieces are written.
    Early,
    /// At `wait` (or the end): catches a buffer rewritten before its copy finished.
    Late,
}

struct MockSink {
    when: When,
    device: Mutex<Vec<u8>>,
    pending: Vec<Mutex<Option<(usize, usize, usize)>>>,
    jitter: Mutex<Rng>,
}

impl MockSink {
    fn new(when: When, len: usize, buffers: usize, seed: u64) -> Self {
        MockSink {
            when,
            device: Mutex::new(vec![0xEE; len]),
            pending: (0..buffers).map(|_| Mutex::new(None)).collect(),
            jitter: Mutex::new(Rng::new(seed)),
        }
    }

    fn delay(&self) {
        let spins = self
            .jitter
            .lock()
            .map(|mut r| r.next_u64() % 2000)
            .unwrap_or(0);
        for _ in 0..spins {
            std::hint::spin_loop();
        }
    }

    fn perform(&self, copy: (usize, usize, usize)) {
        let (src, at, len) = copy;
        // SAFETY (test): src..src+len lies in a staging buffer that outlives the run; the
        // protocol under test promises nobody writes it before this copy.
        let bytes = unsafe { std::slice::from_raw_parts(src as *const u8, len) };
        let mut dev = self.device.lock().expect("device lock");
        dev[at..at + len].copy_from_slice(bytes);
    }

    fn finish(&self) -> Vec<u8> {
        for p in &self.pending {
            if let Some(c) = p.lock().expect("pending lock").take() {
                self.perform(c);
            }
        }
        self.device.lock().expect("device lock").clone()
    }
}

impl Sink for MockSink {
    fn enter(&self) -> Result<(), CudaError> {
        Ok(())
    }

    unsafe fn submit(
        &self,
        b: usize,
        src: *const u8,
        at: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        self.delay();
        let mut slot = self.pending[b].lock().expect("pending lock");
        if let Some(prev) = slot.take() {
            // A real stream runs copies in order; the earlier copy reads the buffer as it is now.
            self.perform(prev);
        }
        match self.when {
            When::Early => self.perform((src as usize, at, len)),
            When::Late => *slot = Some((src as usize, at, len)),
        }
        Ok(())
    }

    fn wait(&self, b: usize) -> Result<(), CudaError> {
        self.delay();
        if let Some(c) = self.pending[b].lock().expect("pending lock").take() {
            self.perform(c);
        }
        Ok(())
    }
}

fn copy_through(
    data: &[u8],
    source: Source<'_>,
    cfg: StagingConfig,
    threads: usize,
    when: When,
    seed: u64,
) -> Result<Vec<u8>, CudaError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let plan = Plan::new(data.len(), &cfg, threads)?;
    let mut storage: Vec<Vec<u8>> = (0..plan.buffers).map(|_| vec![0u8; plan.chunk]).collect();
    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| b.as_mut_slice()).collect();
    let sink = MockSink::new(when, data.len(), plan.buffers, seed);
    pool.install(|| run(&plan, source, &mut bufs, &sink, cfg.schedule))?;
    Ok(sink.finish())
}

#[test]
fn both_schedules_copy_every_byte_with_early_and_late_devices() {
    let mut rng = test_rng("both_schedules_copy_every_byte_with_early_and_late_devices");
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let prefix = 1 + below(&mut rng, 5000);
    let total = prefix + 600_000;
    let all = random_bytes(&mut rng, total);
    file.write_all(&all).expect("write");
    file.flush().expect("flush");
    for round in 0..48 {
        let len = [0, 1, 4095, 65536, 600_000 - prefix % 7][round % 5];
        let data = &all[prefix..prefix + len];
        let cfg = StagingConfig {
            chunk: [1000usize, 4096, 65536, 100_000, 1 << 20][below(&mut rng, 5)],
            buffers: 1 + below(&mut rng, 5),
            piece: [0usize, 333, 4096, 16384][below(&mut rng, 4)],
            schedule: if round % 2 == 0 {
                Schedule::Stream
            } else {
                Schedule::PerChunk
            },
            first_chunk: 0,
            write_combined: false,
        };
        // Half the rounds of each schedule ramp up to the chunk.
        let cfg = if round % 8 < 4 {
            let chunk = cfg.chunk;
            cfg.with_ramp(random_ramp(&mut rng, chunk).max(1))
        } else {
            cfg
        };
        let threads = [1usize, 2, 3, 8][below(&mut rng, 4)];
        let when = if round % 4 < 2 {
            When::Early
        } else {
            When::Late
        };
        let source = if round % 3 == 0 {
            Source::File {
                file: file.as_file(),
                offset: prefix as u64,
                len,
            }
        } else {
            Source::Map(data)
        };
        let got = copy_through(data, source, cfg, threads, when, rng.next_u64())
            .unwrap_or_else(|e| panic!("{cfg:?} {threads} threads {when:?}: {e}"));
        let diff = got.iter().zip(data).position(|(a, b)| a != b);
        assert_eq!(
            diff, None,
            "{cfg:?}, {threads} threads, {when:?}, {len} bytes: first differing byte"
        );
        assert_eq!(got.len(), data.len());
    }
}

#[test]
fn a_file_shorter_than_the_region_is_an_error() {
    let mut rng = test_rng("a_file_shorter_than_the_region_is_an_error");
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let data = random_bytes(&mut rng, 10_000);
    file.write_all(&data).expect("write");
    file.flush().expect("flush");
    for schedule in [Schedule::PerChunk, Schedule::Stream] {
        let cfg = StagingConfig::new(4096, 2, 1024, schedule);
        let source = Source::File {
            file: file.as_file(),
            offset: 100,
            len: 10_000,
        };
        let r = copy_through(&data, source, cfg, 3, When::Late, 1);
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("model file"), "{schedule:?}: {msg}");
    }
}

#[test]
fn the_host_only_sink_runs_to_the_end() {
    let mut rng = test_rng("the_host_only_sink_runs_to_the_end");
    let data = random_bytes(&mut rng, 300_000);
    for (schedule, first) in [
        (Schedule::PerChunk, 0),
        (Schedule::Stream, 0),
        (Schedule::PerChunk, 4096),
        (Schedule::Stream, 1000),
    ] {
        let cfg = StagingConfig::new(65536, 3, 0, schedule).with_ramp(first);
        let plan = Plan::new(data.len(), &cfg, 4).expect("plan");
        let mut storage = vec![vec![0u8; plan.chunk]; plan.buffers];
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| b.as_mut_slice()).collect();
        run(&plan, Source::Map(&data), &mut bufs, &NullSink, schedule).expect("host-only run");
        // The last chunk went through buffer (chunks - 1) % buffers.
        let last = plan.chunk_range(plan.chunks - 1);
        let b = (plan.chunks - 1) % plan.buffers;
        assert_eq!(&storage[b][..last.len()], &data[last]);
    }
}
