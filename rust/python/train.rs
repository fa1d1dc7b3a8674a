//! `Optimizer` (the state behind `fa.SGD`, `fa.Adam`, `fa.AdamW`) and `fit_epochs`, the training
//! loop: argument checks around `crate::optim` and `crate::train`; the loop runs without the GIL.
use super::arrays::{check_no_aliasing, data_ptr, input_view, new_out, out_view, zeros, OutName};
use super::dtype::{by_dtype, typed, Dtype, Typed};
use super::errors::{run_detached, to_py_err};
use super::locked::Locked;
use super::program::{LockedProgram, Program, SendPtr};
use crate::error::Error;
use crate::float::Float;
use crate::optim::Rule;
use crate::shape::{fmt_dims, BatchSize, Shape};
use crate::train::{Dataset, Schedule, Trainer};
use numpy::{Element, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

type Optimizers = Typed<crate::Optimizer<f32>, crate::Optimizer<f64>>;

/// The optimiser's state: none before the first step (it takes the dtype and length of the
/// parameters it first updates), then flat buffers of that dtype.
enum State {
    Fresh { lr: f64, steps: u64 },
    Ready(Optimizers),
}

impl State {
    fn lr(&self) -> f64 {
        match self {
            State::Fresh { lr, .. } => *lr,
            State::Ready(o) => typed!(o, o => o.lr),
        }
    }
    fn steps(&self) -> u64 {
        match self {
            State::Fresh { steps, .. } => *steps,
            State::Ready(o) => typed!(o, o => o.steps),
        }
    }

    /// The optimiser for `len` parameters of `T`, created on first use.
    fn typed<T: Elem>(
        &mut self,
        rule: Rule,
        len: usize,
    ) -> crate::Result<&mut crate::Optimizer<T>> {
        if let State::Fresh { lr, steps } = *self {
            let mut o = crate::Optimizer::<T>::new(rule, lr, len)?;
            o.steps = steps;
            *self = State::Ready(T::hold(o));
        }
        let State::Ready(held) = self else {
            unreachable!("created above")
        };
        let (held_len, held_dtype) = (typed!(&*held, o => o.len()), held.dtype());
        match T::slot(held) {
            Some(o) if o.len() == len => Ok(o),
            _ => Err(Error::Shape(format!(
                "this optimizer holds state for {held_len} {} parameters, not {len} {}: use one \
                 optimizer per model",
                held_dtype.name(),
                T::NAME
            ))),
        }
    }
}

/// An element type's slot in `Optimizers`.
pub(super) trait Elem: Float + Element {
    fn slot(o: &mut Optimizers) -> Option<&mut crate::Optimizer<Self>>;
    fn hold(o: crate::Optimizer<Self>) -> Optimizers;
}
impl Elem for f32 {
    fn slot(o: &mut Optimizers) -> Option<&mut crate::Optimizer<f32>> {
        match o {
            Typed::F32(o) => Some(o),
            Typed::F64(_) => None,
        }
    }
    fn hold(o: crate::Optimizer<f32>) -> Optimizers {
        Typed::F32(o)
    }
}
impl Elem for f64 {
    fn slot(o: &mut Optimizers) -> Option<&mut crate::Optimizer<f64>> {
        match o {
            Typed::F64(o) => Some(o),
            Typed::F32(_) => None,
        }
    }
    fn hold(o: crate::Optimizer<f64>) -> Optimizers {
        Typed::F64(o)
    }
}

/// A first-order optimiser whose state lives in flat buffers the size of the parameters.
#[pyclass(module = "fastad._fastad", frozen)]
pub struct Optimizer {
    rule: Rule,
    state: Locked<State>,
}

impl Optimizer {
    fn lock(&self, py: Python<'_>) -> PyResult<std::sync::MutexGuard<'_, State>> {
        self.state.lock_py(py).map_err(to_py_err)
    }
}

#[pymethods]
impl Optimizer {
    /// `rule` is "sgd", "adam" or "adamw"; see `fa.SGD`, `fa.Adam`, `fa.AdamW`.
    #[new]
    #[pyo3(signature = (rule, lr, momentum=0.0, nesterov=false, weight_decay=0.0, beta1=0.9,
                        beta2=0.999, eps=1e-8))]
    // As many arguments as the Python signature has keywords (fa.SGD/Adam/AdamW pass theirs).
    #[allow(clippy::too_many_arguments)]
    fn new(
        rule: &str,
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> PyResult<Self> {
        let adam = |decoupled| Rule::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
        };
        let rule = match rule {
            "sgd" => Rule::Sgd {
                momentum,
                nesterov,
                weight_decay,
            },
            "adam" => adam(false),
            "adamw" => adam(true),
            _ => {
                return Err(to_py_err(Error::Invalid(format!(
                    "unknown optimizer rule {rule:?}; use \"sgd\", \"adam\" or \"adamw\""
                ))))
            }
        };
        rule.validate().map_err(to_py_err)?;
        crate::optim::check_lr(lr).map_err(to_py_err)?;
        Ok(Optimizer {
            rule,
            state: Locked::new(State::Fresh { lr, steps: 0 }),
        })
    }

    /// The learning rate (settable, for schedules).
    #[getter]
    fn lr(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(self.lock(py)?.lr())
    }

    #[setter]
    fn set_lr(&self, py: Python<'_>, lr: f64) -> PyResult<()> {
        crate::optim::check_lr(lr).map_err(to_py_err)?;
        match &mut *self.lock(py)? {
            State::Fresh { lr: l, .. } => *l = lr,
            State::Ready(o) => typed!(o, o => o.lr = lr),
        }
        Ok(())
    }

    /// Updates taken so far.
    #[getter]
    fn steps(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.lock(py)?.steps())
    }

    /// State buffers per parameter (Adam 2: first and second moments; SGD 1 with momentum, else 0).
    #[getter]
    fn buffers_per_param(&self) -> usize {
        self.rule.buffers()
    }

    /// One in-place update of `params` (a writable float32 or float64 vector) from `grad`.
    fn step(&self, params: &Bound<'_, PyAny>, grad: &Bound<'_, PyAny>) -> PyResult<()> {
        let (len, dtype) = vector_len_and_dtype(params, "params")?;
        by_dtype!(dtype, T => self.step_typed::<T>(params, grad, len))
    }

    /// A copy of the state buffers, (buffers_per_param · P,), or None before the first step
    /// (and for plain SGD, which keeps none).
    fn state_buffers<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        fn copy<'py, T: Float + Element>(py: Python<'py>, s: &[T]) -> PyResult<Bound<'py, PyAny>> {
            let out = new_out::<T>(py, &[s.len()])?;
            // SAFETY: a new array of T, s.len() long.
            unsafe { out.slice::<T>() }.copy_from_slice(s);
            Ok(out.array)
        }
        match &*self.lock(py)? {
            State::Ready(o) => {
                typed!(o, o => (!o.state.is_empty()).then(|| copy(py, &o.state)).transpose())
            }
            State::Fresh { .. } => Ok(None),
        }
    }

    /// Restores `steps` and the state buffers (as `state_buffers` gave them; None for none).
    #[pyo3(signature = (steps, buffers=None))]
    fn set_state(
        &self,
        py: Python<'_>,
        steps: u64,
        buffers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let per = self.rule.buffers();
        let mut state = self.lock(py)?;
        let lr = state.lr();
        let Some(b) = buffers.filter(|_| per > 0) else {
            if buffers.is_some() {
                return Err(to_py_err(Error::Invalid(
                    "this optimizer keeps no state buffers; pass buffers=None".into(),
                )));
            }
            if per > 0 && steps > 0 {
                // Its next update would start from zero moments with a bias correction for
                // `steps` updates: a silently different optimiser.
                return Err(to_py_err(Error::Invalid(format!(
                    "this optimizer keeps {per} state buffer(s), which a state after {steps} \
                     steps must give"
                ))));
            }
            *state = State::Fresh { lr, steps };
            return Ok(());
        };
        let (total, dtype) = vector_len_and_dtype(b, "buffers")?;
        if total % per != 0 {
            return Err(to_py_err(Error::Shape(format!(
                "buffers has {total} elements; expected {per} buffers of the parameters' length"
            ))));
        }
        fn restore<T: Elem>(
            b: &Bound<'_, PyAny>,
            rule: Rule,
            lr: f64,
            steps: u64,
            per: usize,
            total: usize,
        ) -> PyResult<State> {
            let mut fresh = State::Fresh { lr, steps };
            let o = fresh.typed::<T>(rule, total / per).map_err(to_py_err)?;
            let v = input_view::<T>(
                b,
                &|_| "buffers".into(),
                0,
                Shape::vector(total),
                &mut BatchSize::default(),
            )?;
            // SAFETY: checked for T and `total` elements.
            o.state.copy_from_slice(unsafe { v.slice::<T>() });
            Ok(fresh)
        }
        *state = by_dtype!(dtype, T => restore::<T>(b, self.rule, lr, steps, per, total)?);
        Ok(())
    }
}

impl Optimizer {
    fn step_typed<T: Elem>(
        &self,
        params: &Bound<'_, PyAny>,
        grad: &Bound<'_, PyAny>,
        len: usize,
    ) -> PyResult<()> {
        let pv = out_view::<T>(params, OutName::Plain("params"), &[len])?;
        let gv = input_view::<T>(
            grad,
            &|_| "grad".into(),
            0,
            Shape::vector(len),
            &mut BatchSize::default(),
        )?;
        check_no_aliasing(
            std::slice::from_ref(&gv),
            &|_| "grad".into(),
            &[&pv],
            &|_| OutName::Plain("params"),
        )?;
        let mut state = self.lock(params.py())?;
        let o = state.typed::<T>(self.rule, len).map_err(to_py_err)?;
        // SAFETY: both views checked for T and `len` elements, not overlapping.
        let (p, g) = unsafe { (pv.slice::<T>(), gv.slice::<T>()) };
        o.step(p, g).map_err(to_py_err)
    }
}

/// The length of a 1-D float array and its dtype.
fn vector_len_and_dtype(a: &Bound<'_, PyAny>, what: &str) -> PyResult<(usize, Dtype)> {
    let arr = a.cast::<PyUntypedArray>().map_err(|_| {
        to_py_err(Error::Dtype(format!(
            "{what} must be a NumPy float32 or float64 array"
        )))
    })?;
    let Some(dtype) = Dtype::of_array(arr) else {
        return Err(to_py_err(Error::Dtype(format!(
            "{what} must be float32 or float64, got {}",
            arr.dtype().str()?
        ))));
    };
    match arr.shape() {
        &[n] => Ok((n, dtype)),
        s => Err(to_py_err(Error::Shape(format!(
            "{what} must be a vector (P,), got shape {}",
            fmt_dims(s)
        )))),
    }
}

/// Runs `epochs` epochs of training, numbered from `first_epoch` (which picks each shuffle),
/// updating `params` in place and writing each epoch's loss into `losses` (float64, (epochs,)).
/// `program` is a scalar loss of (params, X[, Y]) compiled with wrt=0.
#[pyfunction]
#[pyo3(signature = (program, params, X, Y, optimizer, epochs, batch_size, shuffle, seed,
                    first_epoch, losses))]
// One argument per setting of `Chain.fit` that reaches the core, as the Python layer passes them.
#[allow(non_snake_case, clippy::too_many_arguments)]
pub fn fit_epochs(
    program: &Program,
    params: &Bound<'_, PyAny>,
    X: &Bound<'_, PyAny>,
    Y: Option<&Bound<'_, PyAny>>,
    optimizer: &Optimizer,
    epochs: usize,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    first_epoch: u64,
    losses: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let schedule = Schedule {
        batch_size,
        shuffle,
        seed,
    };
    let run = Run {
        program,
        params,
        x: X,
        y: Y,
        optimizer,
        epochs,
        schedule,
        first_epoch,
        losses,
    };
    typed!(&program.typed, p => run.typed(p))
}

struct Run<'a, 'py> {
    program: &'a Program,
    params: &'a Bound<'py, PyAny>,
    x: &'a Bound<'py, PyAny>,
    y: Option<&'a Bound<'py, PyAny>>,
    optimizer: &'a Optimizer,
    epochs: usize,
    schedule: Schedule,
    first_epoch: u64,
    losses: &'a Bound<'py, PyAny>,
}

impl Run<'_, '_> {
    fn typed<T: Elem>(&self, program: &LockedProgram<T>) -> PyResult<()> {
        let shapes = &self.program.arg_shapes;
        let expected_args = 2 + usize::from(self.y.is_some());
        if shapes.len() != expected_args {
            return Err(to_py_err(Error::Arity(format!(
                "the loss program takes {} arguments; training passes {expected_args} (params, X{})",
                shapes.len(),
                if self.y.is_some() { ", Y" } else { "" }
            ))));
        }
        let p_len = shapes[0].len(0);
        let name = |k: usize| self.program.arg_name(k);
        let pv = out_view::<T>(self.params, OutName::Plain("params"), &[p_len])?;
        let mut batch = BatchSize::default();
        let xv = input_view::<T>(self.x, &name, 1, shapes[1], &mut batch)?;
        let mut inputs = vec![xv];
        if let Some(y) = self.y {
            inputs.push(input_view::<T>(y, &name, 2, shapes[2], &mut batch)?);
        }
        let rows = batch.get();
        let lv = out_view::<f64>(self.losses, OutName::Plain("losses"), &[self.epochs])?;
        check_no_aliasing(&inputs, &|k| name(k + 1), &[&pv, &lv], &|i| {
            OutName::Plain(["params", "losses"][i])
        })?;
        let mut state = self.optimizer.lock(self.params.py())?;
        let opt = state
            .typed::<T>(self.optimizer.rule, p_len)
            .map_err(to_py_err)?;
        // SAFETY: views checked for their types and lengths; outputs overlap nothing.
        let (params, losses) = unsafe { (pv.slice::<T>(), lv.slice::<f64>()) };
        let x = unsafe { inputs[0].slice::<T>() };
        let y = inputs.get(1).map(|v| unsafe { v.slice::<T>() });
        let (schedule, first, epochs) = (self.schedule, self.first_epoch, self.epochs);
        let work = SendPtr((params, losses, x, y, opt));
        let completed = AtomicUsize::new(0);
        let py = self.params.py();
        let result = run_detached(py, || -> crate::Result<()> {
            let SendPtr((params, losses, x, y, opt)) = work;
            let mut program = program.lock()?;
            let data = Dataset { x, y, rows };
            let mut trainer = Trainer::new(&program, &data, &schedule)?;
            for (e, loss) in losses.iter_mut().enumerate().take(epochs) {
                *loss = trainer.epoch(
                    &mut program,
                    params,
                    &data,
                    &schedule,
                    first + e as u64,
                    opt,
                )?;
                completed.store(e + 1, Ordering::Relaxed);
            }
            Ok(())
        });
        // An interrupted run tells the caller how many epochs' losses it wrote.
        result.inspect_err(|e| {
            if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
                let done = completed.load(Ordering::Relaxed);
                let _ = e.value(py).setattr("epochs_completed", done);
            }
        })
    }
}

/// The sample order `fit(..., shuffle=True, seed=seed)` uses in epoch `epoch` (0-based), as an
/// int64 array: for reproducing a run outside fastad.
#[pyfunction]
pub fn epoch_order<'py>(
    py: Python<'py>,
    n: usize,
    seed: u64,
    epoch: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let out = zeros::<i64>(py, &[n])?;
    // SAFETY: a new C-contiguous array of n int64, which have usize's size and alignment here.
    let order = unsafe { std::slice::from_raw_parts_mut(data_ptr(&out) as *mut usize, n) };
    crate::train::epoch_order(order, seed, epoch);
    Ok(out.into_any())
}
