//! Runners: functions over (plan, their own buffers, arguments) that replay a plan. `Whole`
//! sweeps the whole batch at once, `Tiled` sweeps it tile by tile on every thread, and
//! `per_sample_grad` writes each sample's gradient from one whole-batch sweep, and `layer_rows`
//! each dense layer's two factors of it. `Program` picks one per call.
pub mod layer_rows;
pub mod mode;
pub mod per_sample;
pub mod tiled;
pub mod whole;
pub mod workspace;

pub use layer_rows::layer_rows;
pub use mode::{OutputRows, Seed, Sweeps};
pub use per_sample::per_sample_grad;
pub use tiled::Tiled;
pub use whole::Whole;
