//! How a replay runs: which sweeps, how the reverse sweep is seeded, where a tiled replay's
//! batched output goes. Plain values handed to the runners, decided by the caller per call.

/// How the reverse sweep is seeded.
#[derive(Clone, Copy, Debug)]
pub enum Seed<'a, T> {
    /// With ones: 1 for a scalar output, 1 for each element of a vector of per-sample losses.
    Ones,
    /// With the caller's output cotangent, of the output's shape (a vector–Jacobian product).
    Cotangent(&'a [T]),
}

/// Which sweeps a replay runs.
#[derive(Clone, Copy, Debug)]
pub enum Sweeps<'a, T> {
    /// The forward sweep only: the value.
    Forward,
    /// Forward, then reverse from this seed: the value and the gradients.
    Both(Seed<'a, T>),
}

impl<T> Sweeps<'_, T> {
    pub fn reverse(&self) -> bool {
        matches!(self, Sweeps::Both(_))
    }
}

/// Where a tiled replay writes the rows of a batched output.
#[derive(Debug)]
pub enum OutputRows<'a, T> {
    /// Into the whole-batch runner's table, where `Whole::output` reads it.
    Table,
    /// Straight into the caller's array (when the plan allows it: `TilePlan::output_direct`).
    Caller(&'a mut [T]),
}
