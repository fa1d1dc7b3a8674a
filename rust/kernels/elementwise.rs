//! Elementwise kernels: unary functions, and binary operations with NumPy broadcasting.
use super::for_chunks_mut;
use super::simd::{dispatch, with_fma};
use crate::float::Float;
use crate::ir::{BinaryOp, UnaryOp};

#[inline(always)]
fn sigmoid<T: Float, const FMA: bool>(x: T) -> T {
    // e^-|x| never overflows; e/(1 + e) for x < 0 is one rounding (not e · 1/(1 + e)). The
    // select reads x's sign bit (one blend, no compare) and keeps the loop branch-free.
    let e = x.vexp_neg_abs::<FMA>();
    let numerator = if x.is_sign_negative() { e } else { T::one() };
    numerator / (T::one() + e)
}

#[inline(always)]
fn softplus<T: Float, const FMA: bool>(x: T) -> T {
    // log(1 + e^x) = max(x, 0) + log1p(e^-|x|), exact for large |x|.
    x.max(T::zero()) + x.vexp_neg_abs::<FMA>().ln_1p()
}

/// The output slice reborrowed and an input cut to its length, as locals of the calling loop.
/// Inside a `dispatch` closure, slices used through the closure's captures are reloaded after
/// every store (the compiler cannot tell the store does not change them) and bounds-checked, so
/// the loop stays scalar; these locals let it vectorise.
#[inline(always)]
fn in_registers<'a, 'b, T>(out: &'a mut [T], x: &'b [T]) -> (&'a mut [T], &'b [T]) {
    let n = out.len();
    (out, &x[..n])
}

/// y = op(x).
pub fn unary_forward<T: Float>(op: UnaryOp, x: &[T], y: &mut [T]) {
    fn map<T: Float>(x: &[T], y: &mut [T], f: impl Fn(T) -> T + Sync) {
        for_chunks_mut(y, |r, y| {
            let x = &x[r];
            // An index loop, not iterator adaptors: an adaptor left out of line would not be
            // compiled for the wider instruction set.
            dispatch(
                #[inline(always)]
                || {
                    let (y, x) = in_registers(y, x);
                    for i in 0..y.len() {
                        y[i] = f(x[i]);
                    }
                },
            )
        });
    }
    // Constants go into the closures by value, as in `unary_backward`.
    let zero = T::zero();
    match op {
        UnaryOp::Neg => map(x, y, move |v| -v),
        UnaryOp::Exp => with_fma!(F => map(x, y, move |v| v.vexp::<F>())),
        UnaryOp::Log => map(x, y, move |v| v.ln()),
        UnaryOp::Log1p => map(x, y, move |v| v.ln_1p()),
        UnaryOp::Expm1 => map(x, y, move |v| v.exp_m1()),
        UnaryOp::Sqrt => map(x, y, move |v| v.sqrt()),
        UnaryOp::Abs => map(x, y, move |v| v.abs()),
        UnaryOp::Tanh => with_fma!(F => map(x, y, move |v| v.vtanh::<F>())),
        UnaryOp::Sigmoid => with_fma!(F => map(x, y, sigmoid::<T, F>)),
        // `v.max(0)` would turn NaN into 0; NaN must propagate.
        UnaryOp::Relu => map(x, y, move |v| if v < zero { zero } else { v }),
        UnaryOp::Softplus => with_fma!(F => map(x, y, softplus::<T, F>)),
        UnaryOp::Sin => map(x, y, move |v| v.sin()),
        UnaryOp::Cos => map(x, y, move |v| v.cos()),
        UnaryOp::Square => map(x, y, move |v| v * v),
        UnaryOp::Powf(p) => match small_integer(p) {
            // Repeated multiplication: vectorises, and is exact for small powers.
            Some(n) => map(x, y, move |v| v.powi(n)),
            None => {
                let p = T::from_f64(p);
                map(x, y, move |v| v.powf(p))
            }
        },
    }
}

/// `p` as an i32 when it is a whole number small enough for `powi`.
fn small_integer(p: f64) -> Option<i32> {
    (p.fract() == 0.0 && p.abs() <= 64.0).then_some(p as i32)
}

/// dx += g * op'(x), given y = op(x); or dx = g * op'(x) when `assign` (dx's only writer,
/// which saves zeroing dx first and reading it back).
pub fn unary_backward<T: Float>(
    op: UnaryOp,
    x: &[T],
    y: &[T],
    g: &[T],
    dx: &mut [T],
    assign: bool,
) {
    fn acc<T: Float>(
        assign: bool,
        (x, y, g): (&[T], &[T], &[T]),
        dx: &mut [T],
        df: impl Fn(T, T) -> T + Sync,
    ) {
        for_chunks_mut(dx, |r, dx| {
            let (x, y, g) = (&x[r.clone()], &y[r.clone()], &g[r]);
            dispatch(
                #[inline(always)]
                || {
                    let (dx, x) = in_registers(dx, x);
                    let (y, g) = (&y[..dx.len()], &g[..dx.len()]);
                    if assign {
                        for i in 0..dx.len() {
                            dx[i] = g[i] * df(x[i], y[i]);
                        }
                    } else {
                        for i in 0..dx.len() {
                            dx[i] += g[i] * df(x[i], y[i]);
                        }
                    }
                },
            )
        });
    }
    let xyg = (x, y, g);
    // The closures take their constants by value (`move`): a constant captured by reference is
    // reloaded after every store, as `in_registers` explains, and keeps the loop scalar.
    let (zero, one, two) = (T::zero(), T::one(), T::from_f64(2.0));
    match op {
        UnaryOp::Neg => acc(assign, xyg, dx, move |_, _| -one),
        UnaryOp::Exp => acc(assign, xyg, dx, move |_, y| y),
        UnaryOp::Log => acc(assign, xyg, dx, move |x, _| one / x),
        UnaryOp::Log1p => acc(assign, xyg, dx, move |x, _| one / (one + x)),
        UnaryOp::Expm1 => acc(assign, xyg, dx, move |_, y| y + one),
        UnaryOp::Sqrt => acc(assign, xyg, dx, move |_, y| T::from_f64(0.5) / y),
        UnaryOp::Abs => acc(assign, xyg, dx, move |x, _| {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else {
                zero
            }
        }),
        UnaryOp::Tanh => acc(assign, xyg, dx, move |_, y| one - y * y),
        UnaryOp::Sigmoid => acc(assign, xyg, dx, move |_, y| y * (one - y)),
        UnaryOp::Relu => acc(
            assign,
            xyg,
            dx,
            move |x, _| if x > zero { one } else { zero },
        ),
        UnaryOp::Softplus => with_fma!(F => acc(assign, xyg, dx, move |x, _| sigmoid::<T, F>(x))),
        UnaryOp::Sin => acc(assign, xyg, dx, move |x, _| x.cos()),
        UnaryOp::Cos => acc(assign, xyg, dx, move |x, _| -x.sin()),
        UnaryOp::Square => acc(assign, xyg, dx, move |x, _| two * x),
        UnaryOp::Powf(p) => {
            let (p, pm1) = (T::from_f64(p), T::from_f64(p - 1.0));
            // x^0 is 1 for every x, so its derivative is 0 even where x^-1 is infinite.
            if p == zero {
                if assign {
                    dx.fill(zero);
                }
                return;
            }
            match small_integer(p.to_f64() - 1.0) {
                Some(n) => acc(assign, xyg, dx, move |x, _| p * x.powi(n)),
                None => acc(assign, xyg, dx, move |x, _| p * x.powf(pm1)),
            }
        }
    }
}

/// How an operand of shape (rows, cols) is read when broadcast to the output's (R, C):
/// element (i, j) of the output reads element `i * row + j * col` of the operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Broadcast {
    pub row: usize,
    pub col: usize,
    /// Every element of the output reads the same operand element.
    scalar: bool,
    /// The operand has the output's own shape.
    full: bool,
}

impl Broadcast {
    pub fn new((rows, cols): (usize, usize), (out_rows, out_cols): (usize, usize)) -> Broadcast {
        Broadcast {
            row: if rows == 1 && out_rows != 1 { 0 } else { cols },
            col: if cols == 1 && out_cols != 1 { 0 } else { 1 },
            scalar: rows * cols == 1,
            full: (rows, cols) == (out_rows, out_cols),
        }
    }
    /// Read flat: element k of the output reads element k of the operand, or its only element.
    fn is_flat(&self) -> bool {
        self.scalar || self.full
    }
}

/// One row of an operand as the output's row i reads it: a contiguous row, or one element.
#[derive(Clone, Copy)]
enum Lane<'a, T> {
    Row(&'a [T]),
    One(T),
}

impl<'a, T: Float> Lane<'a, T> {
    #[inline(always)]
    fn of(x: &'a [T], bc: Broadcast, i: usize, cols: usize) -> Self {
        let start = i * bc.row;
        if bc.col == 1 {
            Lane::Row(&x[start..start + cols])
        } else {
            Lane::One(x[start])
        }
    }
    #[inline(always)]
    fn at(self, j: usize) -> T {
        match self {
            Lane::Row(r) => r[j],
            Lane::One(v) => v,
        }
    }
}

#[inline(always)]
fn apply<T: Float>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        // NaN-propagating, as NumPy's maximum and minimum.
        BinaryOp::Maximum => {
            if a.is_nan() || a >= b {
                a
            } else {
                b
            }
        }
        BinaryOp::Minimum => {
            if a.is_nan() || a <= b {
                a
            } else {
                b
            }
        }
    }
}

/// out (R, C) = a op b with broadcasting.
pub fn binary_forward<T: Float>(
    op: BinaryOp,
    (a, ba): (&[T], Broadcast),
    (b, bb): (&[T], Broadcast),
    out: &mut [T],
    (rows, cols): (usize, usize),
) {
    // One monomorphised loop per op, so the inner loops inline and vectorise.
    fn run<T: Float>(
        f: impl Fn(T, T) -> T + Sync,
        (a, ba): (&[T], Broadcast),
        (b, bb): (&[T], Broadcast),
        out: &mut [T],
        (rows, cols): (usize, usize),
    ) {
        if ba.is_flat() && bb.is_flat() {
            // A (1, 1) operand of a (1, 1) output is both; read it as full.
            let (sa, sb) = (!ba.full, !bb.full);
            for_chunks_mut(out, |r, o| {
                dispatch(
                    #[inline(always)]
                    || match (sa, sb) {
                        (false, false) => o
                            .iter_mut()
                            .zip(&a[r.clone()])
                            .zip(&b[r])
                            .for_each(|((o, &x), &y)| *o = f(x, y)),
                        (false, true) => {
                            o.iter_mut().zip(&a[r]).for_each(|(o, &x)| *o = f(x, b[0]))
                        }
                        (true, false) => {
                            o.iter_mut().zip(&b[r]).for_each(|(o, &y)| *o = f(a[0], y))
                        }
                        (true, true) => o.iter_mut().for_each(|o| *o = f(a[0], b[0])),
                    },
                )
            });
        } else {
            // Broadcasting: row by row, each operand is a contiguous row or one element.
            for i in 0..rows {
                let o = &mut out[i * cols..(i + 1) * cols];
                let (x, y) = (Lane::of(a, ba, i, cols), Lane::of(b, bb, i, cols));
                dispatch(
                    #[inline(always)]
                    || match (x, y) {
                        (Lane::Row(x), Lane::Row(y)) => o
                            .iter_mut()
                            .zip(x)
                            .zip(y)
                            .for_each(|((o, &x), &y)| *o = f(x, y)),
                        (Lane::Row(x), Lane::One(y)) => {
                            o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x, y))
                        }
                        (Lane::One(x), Lane::Row(y)) => {
                            o.iter_mut().zip(y).for_each(|(o, &y)| *o = f(x, y))
                        }
                        (Lane::One(x), Lane::One(y)) => o.iter_mut().for_each(|o| *o = f(x, y)),
                    },
                )
            }
        }
    }
    let args = ((a, ba), (b, bb), out, (rows, cols));
    macro_rules! dispatch {
        ($($op:ident),*) => {
            match op {
                $(BinaryOp::$op => run(|x, y| apply(BinaryOp::$op, x, y), args.0, args.1, args.2, args.3),)*
            }
        };
    }
    dispatch!(Add, Sub, Mul, Div, Pow, Maximum, Minimum);
}

/// Which operand of a binary op a gradient is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// ∂(x op z)/∂side at operands x, z and result y, for one (op, side) pair.
#[inline(always)]
fn partial<T: Float>(op: BinaryOp, side: Side, x: T, z: T, y: T) -> T {
    let (zero, one) = (T::zero(), T::one());
    match (op, side) {
        (BinaryOp::Add, _) => one,
        (BinaryOp::Sub, Side::Left) => one,
        (BinaryOp::Sub, Side::Right) => -one,
        (BinaryOp::Mul, Side::Left) => z,
        (BinaryOp::Mul, Side::Right) => x,
        (BinaryOp::Div, Side::Left) => one / z,
        (BinaryOp::Div, Side::Right) => -y / z,
        (BinaryOp::Pow, Side::Left) => {
            if z == zero {
                zero
            } else {
                z * x.powf(z - one)
            }
        }
        // d(x^z)/dz = ln(x) x^z, taken as 0 where x^z is 0 (as JAX does).
        (BinaryOp::Pow, Side::Right) => {
            if y == zero {
                zero
            } else {
                x.ln() * y
            }
        }
        (BinaryOp::Maximum | BinaryOp::Minimum, Side::Left) => {
            if x == y {
                one
            } else {
                zero
            }
        }
        (BinaryOp::Maximum | BinaryOp::Minimum, Side::Right) => {
            if x == y {
                zero
            } else {
                one
            }
        }
    }
}

/// d(side) += reduce-over-broadcast(g * ∂(a op b)/∂side), given y = a op b and its adjoint g;
/// or d(side) = … when `assign` (this is d's first writer, and side is not broadcast).
#[allow(clippy::too_many_arguments)]
pub fn binary_backward<T: Float>(
    op: BinaryOp,
    side: Side,
    (a, ba): (&[T], Broadcast),
    (b, bb): (&[T], Broadcast),
    (y, g): (&[T], &[T]),
    d: &mut [T],
    (rows, cols): (usize, usize),
    assign: bool,
) {
    // One monomorphised loop per (op, side), so the common full/scalar cases vectorise.
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        df: impl Fn(T, T, T) -> T + Sync,
        side: Side,
        (a, ba): (&[T], Broadcast),
        (b, bb): (&[T], Broadcast),
        (y, g): (&[T], &[T]),
        d: &mut [T],
        (rows, cols): (usize, usize),
        assign: bool,
    ) {
        let target = if side == Side::Left { ba } else { bb };
        // d[k] = or += the term, as `assign` says (a loop each, so that each vectorises).
        macro_rules! put {
            ($d:ident, $k:ident => $term:expr) => {
                if assign {
                    for $k in 0..$d.len() {
                        $d[$k] = $term;
                    }
                } else {
                    for $k in 0..$d.len() {
                        $d[$k] += $term;
                    }
                }
            };
        }
        if ba.is_flat() && bb.is_flat() && target.full {
            let (sa, sb) = (!ba.full, !bb.full);
            for_chunks_mut(d, |r, d| {
                let (g, y) = (&g[r.clone()], &y[r.clone()]);
                dispatch(
                    #[inline(always)]
                    || match (sa, sb) {
                        (false, false) => {
                            let (d, g) = in_registers(d, g);
                            let (a, b, y) =
                                (&a[r.clone()][..d.len()], &b[r][..d.len()], &y[..d.len()]);
                            put!(d, k => g[k] * df(a[k], b[k], y[k]));
                        }
                        (false, true) => {
                            let a = &a[r];
                            put!(d, k => g[k] * df(a[k], b[0], y[k]));
                        }
                        (true, false) => {
                            let b = &b[r];
                            put!(d, k => g[k] * df(a[0], b[k], y[k]));
                        }
                        (true, true) => {
                            put!(d, k => g[k] * df(a[0], b[0], y[k]));
                        }
                    },
                )
            });
        } else {
            // Broadcasting, row by row: the target's row receives g·∂ element by element, or,
            // where one of its elements was read by the whole row, their sum. (The plan marks
            // no operand that is broadcast for assignment; zeroed here were one.)
            if assign {
                d.fill(T::zero());
            }
            for i in 0..rows {
                let (g, y) = (&g[i * cols..(i + 1) * cols], &y[i * cols..(i + 1) * cols]);
                let (x, z) = (Lane::of(a, ba, i, cols), Lane::of(b, bb, i, cols));
                let term = |j: usize| g[j] * df(x.at(j), z.at(j), y[j]);
                let at = i * target.row;
                dispatch(
                    #[inline(always)]
                    || {
                        if target.col == 1 {
                            let d = &mut d[at..at + cols];
                            for (j, d) in d.iter_mut().enumerate() {
                                *d += term(j);
                            }
                        } else {
                            d[at] += (0..cols).map(term).fold(T::zero(), |s, v| s + v);
                        }
                    },
                )
            }
        }
    }
    let args = ((a, ba), (b, bb), (y, g), d, (rows, cols), assign);
    macro_rules! dispatch {
        ($($op:ident),*) => {
            match (op, side) {
                $(
                    (BinaryOp::$op, Side::Left) => run(|x, z, y| partial(BinaryOp::$op, Side::Left, x, z, y), side, args.0, args.1, args.2, args.3, args.4, args.5),
                    (BinaryOp::$op, Side::Right) => run(|x, z, y| partial(BinaryOp::$op, Side::Right, x, z, y), side, args.0, args.1, args.2, args.3, args.4, args.5),
                )*
            }
        };
    }
    dispatch!(Add, Sub, Mul, Div, Pow, Maximum, Minimum);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs across sigmoid's and softplus's whole range: both tails (down to subnormal and 0
    /// results), around 0, and the special values.
    fn inputs() -> Vec<f64> {
        let mut xs: Vec<f64> = (-16_000..=16_000).map(|i| i as f64 / 20.0).collect();
        xs.extend((-2000..=2000).map(|i| i as f64 / 1e4));
        xs.extend([
            -0.0,
            1e-30,
            -1e-30,
            1e300,
            -1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]);
        xs
    }

    /// `op` over `xs` in T against `reference` in f64 rounded to T: within `tol` relative, or
    /// `tiny` absolute where the result is subnormal; NaN gives NaN.
    fn check<T: Float>(op: UnaryOp, reference: impl Fn(f64) -> f64, tol: f64, tiny: f64) {
        let mut xs: Vec<T> = inputs().into_iter().map(T::from_f64).collect();
        xs.push(T::nan());
        let mut ys = vec![T::zero(); xs.len()];
        unary_forward(op, &xs, &mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let (x, y) = (x.to_f64(), y.to_f64());
            let want = T::from_f64(reference(x)).to_f64();
            let ok = if x.is_nan() {
                y.is_nan()
            } else if want.is_infinite() {
                y == want
            } else {
                (y - want).abs() <= tol * want.abs() + tiny
            };
            assert!(ok, "{op:?}({x:e}) = {y:e} in {}, want {want:e}", T::NAME);
        }
    }

    #[test]
    fn sigmoid_matches_libm_in_both_tails() {
        // e/(1 + e) with e = e^−|x|, so the negative tail keeps its relative accuracy.
        let sigmoid = |x: f64| {
            let e = (-x.abs()).exp();
            if x >= 0.0 {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            }
        };
        check::<f32>(UnaryOp::Sigmoid, sigmoid, 4e-7, 3e-45);
        check::<f64>(UnaryOp::Sigmoid, sigmoid, 1e-15, 1e-322);
    }

    #[test]
    fn softplus_matches_libm_in_both_tails() {
        let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
        check::<f32>(UnaryOp::Softplus, softplus, 4e-7, 3e-45);
        check::<f64>(UnaryOp::Softplus, softplus, 1e-15, 1e-322);
    }
}
