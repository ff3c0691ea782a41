//! CUDA graph replay of the forward pass for repeated batch shapes.
//!
//! The kernels' launch parameters depend only on the batch's token count, sequence count and
//! longest sequence (the offsets and token ids are read from device buffers filled before each
//! pass), so one captured graph serves every batch of that shape. A shape is run eagerly the
//! first time it is seen (the dispatcher measures and every lazy allocation happens then), and
//! captured the second time; from then on the pass is one graph launch. Graphs are dropped with
//! the buffers they were captured on.

use std::collections::{HashMap, HashSet};

use cudarc::driver::{sys, CudaGraph};

use crate::runtime::cuda::{CudaError, CudaRuntime};

/// A batch shape: (tokens, sequences, longest sequence).
pub(crate) type Shape = (usize, usize, usize);

/// A captured pass.
struct Graph(CudaGraph);

// SAFETY: a `Graph` is only reached through `Graphs`, which lives inside the encoder's buffer
// mutex: no two threads use one graph at the same time, which is all the driver requires.
unsafe impl Send for Graph {}

/// The graphs captured for each shape, and the shapes seen once.
#[derive(Default)]
pub(crate) struct Graphs {
    graphs: HashMap<Shape, Graph>,
    seen: HashSet<Shape>,
    /// Shapes whose capture failed: they run eagerly.
    failed: HashSet<Shape>,
}

/// What to do for a shape.
pub(crate) enum Plan {
    /// Run the pass eagerly.
    Eager,
    /// Capture the pass, then launch it.
    Capture,
    /// Launch the captured graph.
    Replay,
}

impl Graphs {
    /// Decides how to run `shape` (and counts it as seen).
    pub fn plan(&mut self, shape: Shape) -> Plan {
        if self.graphs.contains_key(&shape) {
            Plan::Replay
        } else if self.failed.contains(&shape) || self.seen.insert(shape) {
            Plan::Eager
        } else {
            Plan::Capture
        }
    }

    /// Launches the graph of `shape`.
    pub fn replay(&self, rt: &CudaRuntime, shape: Shape) -> Result<(), CudaError> {
        let g = self
            .graphs
            .get(&shape)
            .ok_or_else(|| CudaError::Invalid(format!("no graph for batch shape {shape:?}")))?;
        rt.bind()?;
        g.0.launch()
            .map_err(CudaError::driver("launching the encoder graph"))
    }

    /// Captures what `pass` enqueues on the runtime's stream as the graph of `shape`. When the
    /// capture fails, the shape is marked to run eagerly and the error is returned after the
    /// stream left capture mode.
    pub fn capture(
        &mut self,
        rt: &CudaRuntime,
        shape: Shape,
        pass: impl FnOnce() -> Result<(), crate::runtime::RuntimeError>,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let stream = rt.stream();
        rt.bind()?;
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(CudaError::driver("beginning the encoder graph capture"))?;
        let r = pass();
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        let graph = match (r, ended) {
            (Ok(()), Ok(Some(g))) => g,
            (Err(e), _) => {
                self.failed.insert(shape);
                return Err(e);
            }
            (Ok(()), Err(e)) => {
                self.failed.insert(shape);
                return Err(CudaError::driver("ending the encoder graph capture")(e).into());
            }
            (Ok(()), Ok(None)) => {
                self.failed.insert(shape);
                return Err(
                    CudaError::Invalid("the encoder graph capture was empty".into()).into(),
                );
            }
        };
        self.graphs.insert(shape, Graph(graph));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Graphs, Plan};

    #[test]
    fn a_shape_runs_eagerly_first_then_is_captured() {
        let mut g = Graphs::default();
        assert!(matches!(g.plan((128, 1, 128)), Plan::Eager));
        assert!(matches!(g.plan((128, 1, 128)), Plan::Capture));
        // Another shape starts over.
        assert!(matches!(g.plan((256, 2, 128)), Plan::Eager));
        // A shape whose capture failed stays eager.
        g.failed.insert((128, 1, 128));
        assert!(matches!(g.plan((128, 1, 128)), Plan::Eager));
        assert!(matches!(g.plan((128, 1, 128)), Plan::Eager));
    }
}
