//! Wall-clock time by phase of a conversion, for the report (`et-convert` prints it with
//! `--calibrate`, where a conversion takes minutes).

use std::time::{Duration, Instant};

use serde::Serialize;

/// The stage forward passes of calibrated pruning (phase names of the report).
pub(crate) const ACTIVATIONS: &str = "activations";
/// The statistics accumulation.
pub(crate) const STATISTICS: &str = "statistics";
/// Choosing the kept units and refitting them.
pub(crate) const FITTING: &str = "fitting";

/// Seconds spent in one phase of a conversion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTime {
    /// The phase, in words (`activations`, `statistics`, `fitting`, ...).
    pub phase: String,
    /// Wall-clock seconds, summed over every time the phase ran.
    pub seconds: f64,
}

/// Time by phase, in the order the phases first ran.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phases {
    list: Vec<PhaseTime>,
}

impl Phases {
    /// Adds `elapsed` to `phase`.
    pub(crate) fn add(&mut self, phase: &str, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        match self.list.iter_mut().find(|p| p.phase == phase) {
            Some(p) => p.seconds += s,
            None => self.list.push(PhaseTime {
                phase: phase.to_string(),
                seconds: s,
            }),
        }
    }

    /// Runs `f` and adds its time to `phase`.
    pub(crate) fn time<T>(&mut self, phase: &str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.add(phase, t0.elapsed());
        out
    }

    /// The phases in the order they first ran.
    pub(crate) fn into_vec(self) -> Vec<PhaseTime> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_sum_by_name_in_first_run_order() {
        let mut p = Phases::default();
        p.add("b", Duration::from_millis(500));
        p.add("a", Duration::from_millis(250));
        p.add("b", Duration::from_millis(1500));
        let v = p.time("c", || 7);
        assert_eq!(v, 7);
        let list = p.into_vec();
        let names: Vec<&str> = list.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert!((list[0].seconds - 2.0).abs() < 1e-9);
        assert!((list[1].seconds - 0.25).abs() < 1e-9);
    }
}
