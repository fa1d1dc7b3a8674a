//! The dense layers of a program with per-sample gradients, as Kronecker-factored curvature and
//! the Laplace predictive see them: a product Z = A Wᵀ (+ b) whose weight W (n × k, stored row
//! by row) and bias b are disjoint slices of the parameters. Sample b's gradient for the layer
//! is δ_b ā_bᵀ with ā_b = [a_b, 1] (the 1 only with a bias) and δ_b the adjoint row of Z, so the
//! layer's curvature factors are Σ ā āᵀ and Σ δ δᵀ (`runner/layer_rows.rs` writes the rows).
use crate::error::{Error, Result};
use crate::plan::per_sample::{PerSamplePlan, Use};
use crate::plan::step::Step;

/// One dense layer: where its parameters are and which steps hold its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseLayer {
    /// The product step Z (its adjoint rows are δ).
    pub(crate) step: usize,
    /// The step whose rows are the layer's inputs a.
    pub(crate) input: usize,
    /// Offset of W (outputs × inputs, row-major) in the parameters.
    pub weight: usize,
    /// Offset of b (outputs) in the parameters, when the layer has one.
    pub bias: Option<usize>,
    pub inputs: usize,
    pub outputs: usize,
}

impl DenseLayer {
    /// Elements of one row of ā: the inputs, and a 1 for the bias.
    pub fn input_width(&self) -> usize {
        self.inputs + usize::from(self.bias.is_some())
    }
}

fn refused<R>(why: &str) -> Result<R> {
    Err(Error::Unsupported(format!("dense-layer factors: {why}")))
}

/// The layers, in the order their weights are read, or why the program's parameters are not
/// read as disjoint layers of the form X @ W.T (+ b).
pub(crate) fn dense_layers(steps: &[Step], ps: &PerSamplePlan) -> Result<Vec<DenseLayer>> {
    if ps.first.iter().any(|&first| !first) {
        return refused("a layer's parameters are read twice (shared weights)");
    }
    let mut layers: Vec<DenseLayer> = Vec::new();
    for u in &ps.uses {
        if let Use::Weight {
            step,
            a,
            offset,
            transposed,
        } = *u
        {
            if !transposed {
                return refused(
                    "a weight is read as X @ W; the factors need layers X @ W.T, weights stored \
                     (outputs, inputs) as fa.Dense stores them",
                );
            }
            layers.push(DenseLayer {
                step,
                input: a,
                weight: offset,
                bias: None,
                inputs: steps[a].shape.len(1),
                outputs: steps[step].shape.len(1),
            });
        }
    }
    for u in &ps.uses {
        if let Use::Bias { step, offset } = *u {
            match layers.iter_mut().find(|l| l.step == step) {
                Some(layer) => layer.bias = Some(offset),
                None => return refused("a bias is added to a product without parameters"),
            }
        }
    }
    Ok(layers)
}
