//! Runners: functions over (plan, their own buffers, arguments) that replay a plan. `Whole`
//! sweeps the whole batch at once, `Tiled` sweeps it tile by tile on every thread, and
//! `per_sample_grad` writes each sample's gradient from one whole-batch sweep, and `layer_rows`
//! each dense layer's two factors of it; `kron_factors` sums those factors' Gram matrices inside
//! a tiled replay. `Program` picks one per call.
pub mod kron_factors;
pub mod layer_rows;
pub mod mode;
pub mod per_sample;
pub mod tiled;
pub mod whole;
pub mod workspace;

pub use kron_factors::{kron_factors, KronSums};
pub use layer_rows::layer_rows;
pub use mode::{OutputRows, Seed, Sweeps};
pub use per_sample::per_sample_grad;
pub use tiled::Tiled;
pub use whole::Whole;
