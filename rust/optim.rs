//! First-order optimisers updating a flat parameter vector in place, with PyTorch's update rules
//! (so results can be compared with it step by step). Their state lives in flat buffers the size
//! of the parameters, allocated once; a step allocates nothing.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::simd::dispatch;

/// The update rule and its hyper-parameters (the learning rate is kept apart: schedules change it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// θ −= lr·v with v = g + wd·θ, or with momentum μ: buf = μ·buf + v (buf = v at the first
    /// step), v = buf (or v + μ·buf with Nesterov).
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// Adam (Kingma & Ba) with bias correction. `decoupled` is AdamW: the decay shrinks θ by
    /// (1 − lr·wd) instead of being added to the gradient.
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    },
}

impl Rule {
    /// Checks the hyper-parameters, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str, range: &str, v: f64| {
            if ok {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "optimizer: {what} must be {range}, got {v}"
                )))
            }
        };
        match *self {
            Rule::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                check(
                    (0.0..1.0).contains(&momentum),
                    "momentum",
                    "in [0, 1)",
                    momentum,
                )?;
                check(weight_decay >= 0.0, "weight_decay", "≥ 0", weight_decay)?;
                if nesterov && momentum == 0.0 {
                    return Err(Error::Invalid(
                        "optimizer: nesterov=True needs momentum > 0".into(),
                    ));
                }
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                check((0.0..1.0).contains(&beta1), "betas[0]", "in [0, 1)", beta1)?;
                check((0.0..1.0).contains(&beta2), "betas[1]", "in [0, 1)", beta2)?;
                check(eps >= 0.0, "eps", "≥ 0", eps)?;
                check(weight_decay >= 0.0, "weight_decay", "≥ 0", weight_decay)?;
            }
        }
        Ok(())
    }

    /// State buffers per parameter: Adam keeps two moments, SGD with momentum one buffer.
    pub fn buffers(&self) -> usize {
        match *self {
            Rule::Sgd { momentum, .. } => usize::from(momentum != 0.0),
            Rule::Adam { .. } => 2,
        }
    }
}

/// An optimiser for `len` parameters.
#[derive(Clone, Debug)]
pub struct Optimizer<T> {
    pub rule: Rule,
    pub lr: f64,
    /// Steps taken so far.
    pub steps: u64,
    /// `rule.buffers()` buffers of `len` elements, one after the other (momentum; or Adam's first
    /// then second moment).
    pub state: Vec<T>,
    len: usize,
}

impl<T: Float> Optimizer<T> {
    pub fn new(rule: Rule, lr: f64, len: usize) -> Result<Self> {
        rule.validate()?;
        check_lr(lr)?;
        Ok(Optimizer {
            rule,
            lr,
            steps: 0,
            state: crate::buffer::filled(rule.buffers() * len, T::zero(), "optimizer state")?,
            len,
        })
    }

    /// Parameters this optimiser updates.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One update of `params` from the gradient `grad` (both `len` long).
    pub fn step(&mut self, params: &mut [T], grad: &[T]) -> Result<()> {
        if params.len() != self.len || grad.len() != self.len {
            return Err(Error::Shape(format!(
                "optimizer: it updates {} parameters; got params of {} and a gradient of {}",
                self.len,
                params.len(),
                grad.len()
            )));
        }
        self.steps += 1;
        let lr = T::from_f64(self.lr);
        match self.rule {
            Rule::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let (mu, wd) = (T::from_f64(momentum), T::from_f64(weight_decay));
                let first = self.steps == 1;
                let update = |params: &mut [T], buf: &mut [T], grad: &[T]| {
                    let n = params.len();
                    let grad = &grad[..n];
                    if momentum == 0.0 {
                        // No momentum buffer (it is empty).
                        for i in 0..n {
                            params[i] = params[i] - lr * (grad[i] + wd * params[i]);
                        }
                        return;
                    }
                    let buf = &mut buf[..n];
                    for i in 0..n {
                        let v = grad[i] + wd * params[i];
                        buf[i] = if first { v } else { mu * buf[i] + v };
                        let v = if nesterov { v + mu * buf[i] } else { buf[i] };
                        params[i] = params[i] - lr * v;
                    }
                };
                let buf = &mut self.state[..];
                dispatch(
                    #[inline(always)]
                    || update(params, buf, grad),
                );
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let t = self.steps as i32;
                let correction1 = 1.0 - beta1.powi(t);
                let step_size = T::from_f64(self.lr / correction1);
                let root2 = T::from_f64((1.0 - beta2.powi(t)).sqrt());
                let (b1, b2, eps) = (T::from_f64(beta1), T::from_f64(beta2), T::from_f64(eps));
                let (one, wd) = (T::one(), T::from_f64(weight_decay));
                let shrink = one - lr * wd;
                let (m, v) = self.state.split_at_mut(self.len);
                // The slices are the closure's arguments, not its captures, so the loop
                // vectorises (see `kernels::elementwise::in_registers`).
                let update = |params: &mut [T], m: &mut [T], v: &mut [T], grad: &[T]| {
                    let n = params.len();
                    let (m, v, grad) = (&mut m[..n], &mut v[..n], &grad[..n]);
                    for i in 0..n {
                        let mut g = grad[i];
                        if decoupled {
                            params[i] = params[i] * shrink;
                        } else {
                            g += wd * params[i];
                        }
                        m[i] = b1 * m[i] + (one - b1) * g;
                        v[i] = b2 * v[i] + (one - b2) * g * g;
                        params[i] = params[i] - step_size * m[i] / (v[i].sqrt() / root2 + eps);
                    }
                };
                dispatch(
                    #[inline(always)]
                    || update(params, m, v, grad),
                );
            }
        }
        Ok(())
    }
}

/// A learning rate must be finite and ≥ 0.
pub fn check_lr(lr: f64) -> Result<()> {
    if lr >= 0.0 && lr.is_finite() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "optimizer: lr must be finite and ≥ 0, got {lr}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_first_step_moves_each_parameter_by_lr() {
        // At t = 1, m̂ = g and v̂ = g², so each parameter moves by lr·sign(g) (eps aside).
        let rule = Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.0,
            weight_decay: 0.0,
            decoupled: false,
        };
        let mut opt = Optimizer::<f64>::new(rule, 0.1, 3).unwrap();
        let mut p = [1.0, 2.0, 3.0];
        opt.step(&mut p, &[0.5, -4.0, 1e-3]).unwrap();
        for (got, want) in p.iter().zip([0.9, 2.1, 2.9]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert!(opt.step(&mut p, &[0.0; 2]).is_err());
    }
}
