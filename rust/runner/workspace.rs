//! The packing space of a plan's matrix products: sized for the largest product of any step at
//! a batch size and thread count, grown only when either is larger than ever before.
use crate::error::Result;
use crate::float::Float;
use crate::kernels::gemm::workspace_len;
use crate::plan::step::{matmul_dims, product, Step};

#[derive(Debug, Default)]
pub struct GemmWorkspace<T> {
    pub(crate) buf: Vec<T>,
    batch: usize,
    threads: usize,
}

impl<T: Float> GemmWorkspace<T> {
    pub fn new() -> Self {
        GemmWorkspace {
            buf: Vec::new(),
            batch: 0,
            threads: 0,
        }
    }

    /// Room for every product of `steps` (forward and both reverse ones) at `batch` rows on
    /// `threads` threads.
    pub(crate) fn reserve(&mut self, steps: &[Step], batch: usize, threads: usize) -> Result<()> {
        if batch <= self.batch && threads <= self.threads {
            return Ok(());
        }
        let (batch, threads) = (batch.max(self.batch), threads.max(self.threads));
        let need = steps
            .iter()
            .filter_map(|s| product(&s.op))
            .map(|(ab, t)| largest(matmul_dims(steps, batch, ab, t), threads))
            .max()
            .unwrap_or(0);
        if need > self.buf.len() {
            crate::buffer::resize(&mut self.buf, need, T::zero(), "matrix product workspace")?;
        }
        self.batch = batch;
        self.threads = threads;
        Ok(())
    }
}

/// The workspace of a product (m, k, n) and of both products of its reverse sweep.
pub(crate) fn largest((m, k, n): (usize, usize, usize), threads: usize) -> usize {
    [(m, n, k), (m, k, n), (k, n, m)]
        .into_iter()
        .map(|(m, n, k)| workspace_len(m, n, k, threads))
        .max()
        .unwrap_or(0)
}
