//! Where the host's time goes in the encoder's passes, by phase ([`PassStats`]).
//!
//! Times are host clock: the launches are asynchronous, so "enqueue" is the host's time to issue
//! the pass (kernel launches, graph launches and captures, dispatch decisions) and "wait" the time
//! the host then waits for the device to finish; their sum bounds the pass from above.

use std::time::Duration;

/// How a pass was run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassKind {
    /// Kernel by kernel (first sight of a shape, hidden states asked, or graphs off).
    Eager,
    /// Captured as a graph, then launched.
    Captured,
    /// A captured graph launched again.
    Replayed,
}

/// Host time of the encoder's passes by phase, summed since the encoder opened or
/// [`super::CudaEncoder::reset_stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassStats {
    /// Passes run.
    pub passes: u64,
    /// Batch checks, packing, and buffer growth.
    pub prepare: Duration,
    /// Times the device buffers were replaced by bigger ones.
    pub buffer_growths: u64,
    /// Copying the token arrays to the device.
    pub upload: Duration,
    /// Issuing the pass (launches, graph capture, dispatch decisions, pooling).
    pub enqueue: Duration,
    /// Waiting for the device to finish the pass.
    pub wait: Duration,
    /// Copying results back (and converting hidden states to f32).
    pub download: Duration,
    /// Passes run kernel by kernel.
    pub eager: u64,
    /// Passes captured as a graph (then launched).
    pub captured: u64,
    /// Passes that launched a graph captured before.
    pub replayed: u64,
    /// Rows the kernels ran on (rounded batches included).
    pub rows: u64,
    /// Rows of the batches' own sequences.
    pub real_rows: u64,
}

impl PassStats {
    pub(crate) fn count(&mut self, kind: PassKind) {
        match kind {
            PassKind::Eager => self.eager += 1,
            PassKind::Captured => self.captured += 1,
            PassKind::Replayed => self.replayed += 1,
        }
    }

    /// Sum of the phases.
    pub fn total(&self) -> Duration {
        self.prepare + self.upload + self.enqueue + self.wait + self.download
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The phases as text lines, with the dispatcher's measuring (`measured` weights in `measuring`).
pub fn format_stats(s: &PassStats, measured: usize, measuring: Duration) -> String {
    let per = |d: Duration| ms(d) / (s.passes.max(1) as f64);
    let mut out = format!(
        "passes {}: {:.2} ms ({:.3} ms a pass)\n",
        s.passes,
        ms(s.total()),
        per(s.total())
    );
    let rows = [
        ("prepare", s.prepare, "checks, packing, buffer growth"),
        ("upload", s.upload, "token arrays to the device"),
        ("enqueue", s.enqueue, "launches, graphs, dispatch"),
        ("wait", s.wait, "device finishing the pass"),
        ("download", s.download, "results to the host"),
    ];
    for (name, d, what) in rows {
        out.push_str(&format!(
            "  {name:<9} {:>9.2} ms {:>8.3} ms/pass  {what}\n",
            ms(d),
            per(d)
        ));
    }
    out.push_str(&format!(
        "  graphs: {} eager, {} captured, {} replayed; buffers grown {} times; rows {} ({} of them the batches' own)\n",
        s.eager, s.captured, s.replayed, s.buffer_growths, s.rows, s.real_rows
    ));
    out.push_str(&format!(
        "  dispatcher: {measured} measurements, {:.2} ms\n",
        ms(measuring)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_sum_and_format() {
        let mut s = PassStats {
            passes: 4,
            prepare: Duration::from_micros(100),
            upload: Duration::from_micros(200),
            enqueue: Duration::from_micros(300),
            wait: Duration::from_micros(3_000),
            download: Duration::from_micros(400),
            ..PassStats::default()
        };
        s.count(PassKind::Eager);
        s.count(PassKind::Replayed);
        s.count(PassKind::Replayed);
        assert_eq!(s.total(), Duration::from_micros(4_000));
        let text = format_stats(&s, 3, Duration::from_millis(12));
        assert!(
            text.starts_with("passes 4: 4.00 ms (1.000 ms a pass)"),
            "{text}"
        );
        assert!(
            text.contains("wait           3.00 ms    0.750 ms/pass"),
            "{text}"
        );
        assert!(text.contains("1 eager, 0 captured, 2 replayed"), "{text}");
        assert!(text.contains("3 measurements, 12.00 ms"), "{text}");
    }
}
