//! Transcendental functions written so that a loop over them vectorises: no branches, no table
//! lookups, no libm calls — range reduction and a polynomial, with 2^k assembled from bits.
//! Accuracy is within a few ulp of libm over the whole range, including overflow to inf,
//! gradual underflow to subnormals and 0, and NaN propagation.

/// a·b + c: one fused multiply-add when `FMA`, else a multiply and an add. `FMA` must only be
/// true in code compiled for a CPU with FMA (inside `simd::dispatch` at the AVX2 or AVX-512
/// level; `with_fma!` decides): elsewhere a fused multiply-add is a libm call.
#[inline(always)]
pub fn madd<T: num_traits::Float, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// c[0]·xⁿ⁻¹ + … + c[n−1], by Horner's rule.
#[inline(always)]
fn horner<T: num_traits::Float, const N: usize, const FMA: bool>(x: T, c: [T; N]) -> T {
    let mut p = c[0];
    for &c in &c[1..] {
        p = madd::<T, FMA>(p, x, c);
    }
    p
}

/// The coefficients `c` (highest degree first, as `horner` takes them) of p(sign·x) for sign ±1,
/// times `scale`: constants, folded where the function is inlined.
#[inline(always)]
fn signed_scaled<T: num_traits::Float, const N: usize>(mut c: [T; N], sign: T, scale: T) -> [T; N] {
    // A plain loop: `array::from_fn` is not always inlined, and a call would keep the loop
    // around this scalar.
    for (j, c) in c.iter_mut().enumerate() {
        *c = *c * scale * if (N - 1 - j) % 2 == 1 { sign } else { T::one() };
    }
    c
}

/// e^x for f64: x = k·ln2 + r with |r| ≤ ln2/2, e^r by its Taylor polynomial to degree 13
/// (truncation error < 5e-18), then scaled by 2^k in two halves so subnormal results and the
/// overflow to inf come out right.
#[inline(always)]
pub fn exp_f64<const FMA: bool>(x: f64) -> f64 {
    // Outside this range e^x is inf or 0 in f64; clamping keeps k's exponent bits in range.
    // `clamp` keeps NaN, which then propagates through the arithmetic.
    let (t, p) = exp_parts_f64::<FMA>(x.clamp(-746.0, 710.0), 1.0, 1.0);
    // 2^k = 2^k1 · 2^k2 with k1 = round(k/2): each half is a normal number.
    let k = t - SHIFT_F64;
    let t1 = k * 0.5 + SHIFT_F64;
    let t2 = (k - (t1 - SHIFT_F64)) + SHIFT_F64;
    p * pow2_f64(t1) * pow2_f64(t2)
}

/// e^−|x| for f64, as `exp_f64` but with 2^k in one factor, which the range k ≤ 0 allows: the
/// exponent of sigmoid and softplus, cheaper by the instructions of the second half.
#[inline(always)]
pub fn exp_neg_abs_f64<const FMA: bool>(x: f64) -> f64 {
    // |x| clamped by one `min` instruction that keeps NaN (`f64::min` would take the bound).
    let a = x.abs();
    let a = if a > 746.0 { 746.0 } else { a };
    // k ∈ [−1076, 0]: p·2^(k+55) is a normal number (p ≥ 1/√2), so with p's factor 2^−55
    // taken into its coefficients (exactly) the one product rounds a subnormal result once.
    let (t, p) = exp_parts_f64::<FMA>(a, -1.0, f64::from_bits((1023 - 55) << 52));
    let k = t.to_bits().wrapping_sub(SHIFT_F64.to_bits());
    p * f64::from_bits(k.wrapping_add(1023 + 55) << 52)
}

/// Adding 1.5·2^52 rounds to an integer and leaves it in the low mantissa bits.
const SHIFT_F64: f64 = 6_755_399_441_055_744.0;

/// The reduction shared by the f64 exponentials, for x = sign·a (sign ±1, a clamped): t = k +
/// SHIFT (k = round(x/ln2) in t's low bits) and p = scale·e^r for r = x − k·ln2. With sign −1
/// the arithmetic is that of x, negated (exactly), so e^−|x| clamps |x| with one `min` and
/// needs no negation.
#[inline(always)]
fn exp_parts_f64<const FMA: bool>(a: f64, sign: f64, scale: f64) -> (f64, f64) {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1; // ln 2 to 32 bits: k·LN2_HI is exact
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let t = madd::<f64, FMA>(a, sign * std::f64::consts::LOG2_E, SHIFT_F64);
    let k = t - SHIFT_F64;
    // ρ = sign·r = a − sign·k·ln2, and e^r = Σ cᵢ (sign·ρ)ⁱ.
    let sk = -sign * k;
    let rho = madd::<f64, FMA>(sk, LN2_LO, madd::<f64, FMA>(sk, LN2_HI, a));
    let p = horner::<_, _, FMA>(
        rho,
        signed_scaled(
            [
                1.0 / 6_227_020_800.0, // 1/13!
                1.0 / 479_001_600.0,
                1.0 / 39_916_800.0,
                1.0 / 3_628_800.0,
                1.0 / 362_880.0,
                1.0 / 40_320.0,
                1.0 / 5_040.0,
                1.0 / 720.0,
                1.0 / 120.0,
                1.0 / 24.0,
                1.0 / 6.0,
                0.5,
                1.0,
                1.0,
            ],
            sign,
            scale,
        ),
    );
    (t, p)
}

/// 2^j for j left in the low mantissa bits of `t` by the SHIFT trick (|j| ≤ 1023).
#[inline(always)]
fn pow2_f64(t: f64) -> f64 {
    f64::from_bits(t.to_bits().wrapping_add(1023) << 52)
}

/// e^x for f32, as `exp_f64`, with a degree-6 polynomial fitted to e^r's relative error on
/// |r| ≤ ln2/2 (within 2e-8 with its coefficients rounded to f32). The reduction is written with
/// fused multiply-adds where the CPU has them (each fused step is at least as exact as the
/// two-product form), and 2^k is split into its two halves with integer operations on t's bits:
/// these loops are bound by the instruction count, and an f32 exp is the cost of a sigmoid.
#[inline(always)]
pub fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    let (t, p) = exp_parts_f32::<FMA>(x.clamp(-104.0, 89.0), 1.0, 1.0);
    // t's bits are SHIFT's plus k (|k| ≤ 150); 2^k = 2^k1 · 2^k2 with k1 = ⌊k/2⌋, so each half
    // is a normal number and a subnormal result is rounded once.
    let k = t.to_bits().wrapping_sub(SHIFT_F32.to_bits()) as i32;
    let k1 = k >> 1;
    p * pow2_f32(k1) * pow2_f32(k - k1)
}

/// e^−|x| for f32, as `exp_f32` but with 2^k in one factor (see `exp_neg_abs_f64`).
#[inline(always)]
pub fn exp_neg_abs_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let a = if a > 104.0 { 104.0 } else { a };
    // k ∈ [−150, 0]; p = 2^−25·e^r, and p·2^(k+25) rounds a subnormal result once.
    let (t, p) = exp_parts_f32::<FMA>(a, -1.0, pow2_f32(-25));
    let k = t.to_bits().wrapping_sub(SHIFT_F32.to_bits()) as i32;
    p * pow2_f32(k.wrapping_add(25))
}

const SHIFT_F32: f32 = 12_582_912.0; // 1.5·2^23

/// The reduction shared by the f32 exponentials, as `exp_parts_f64`.
#[inline(always)]
fn exp_parts_f32<const FMA: bool>(a: f32, sign: f32, scale: f32) -> (f32, f32) {
    const LN2_HI: f32 = 0.693_359_4; // ln 2 to 12 bits: k·LN2_HI is exact without FMA too
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = madd::<f32, FMA>(a, sign * std::f32::consts::LOG2_E, SHIFT_F32);
    let k = t - SHIFT_F32;
    let sk = -sign * k;
    let rho = madd::<f32, FMA>(sk, LN2_LO, madd::<f32, FMA>(sk, LN2_HI, a));
    let p = horner::<_, _, FMA>(
        rho,
        signed_scaled(
            [
                1.383_679_3e-3,
                8.374_857e-3,
                4.166_823e-2,
                1.666_642e-1,
                4.999_999e-1,
                1.0,
                1.0,
            ],
            sign,
            scale,
        ),
    );
    (t, p)
}

/// 2^j for |j| ≤ 127, from its exponent bits (wrapping: a NaN's k is garbage, and p is NaN).
#[inline(always)]
fn pow2_f32(j: i32) -> f32 {
    f32::from_bits((j.wrapping_add(127) as u32) << 23)
}

/// tanh for f64: (1 − e)/(1 + e) with e = e^−2|x| and the sign of x, except for |x| < 1/8, where
/// that would cancel and the Taylor series to x¹⁵ is used (truncation < 2e-18 relative). Both
/// are computed and one selected, so a loop stays branch-free.
#[inline(always)]
pub fn tanh_f64<const FMA: bool>(x: f64) -> f64 {
    let ax = x.abs();
    let e = exp_neg_abs_f64::<FMA>(2.0 * x);
    let far = (1.0 - e) / (1.0 + e);
    let x2 = x * x;
    let p = horner::<_, _, FMA>(
        x2,
        [
            -929_569.0 / 638_512_875.0, // x¹⁵
            21_844.0 / 6_081_075.0,
            -1_382.0 / 155_925.0,
            62.0 / 2_835.0,
            -17.0 / 315.0,
            2.0 / 15.0,
            -1.0 / 3.0,
        ],
    );
    let near = ax + ax * x2 * p;
    (if ax < 0.125 { near } else { far }).copysign(x)
}

/// tanh for f32: Eigen's rational approximation (odd degree-13 over even degree-6 polynomial)
/// on x clamped to ±7.9053 (beyond which tanh rounds to ±1 in f32); within 4e-7 relative.
/// Saturated inputs give exactly ±1 (selected: the rational with fused multiply-adds rounds
/// to 1 − 2⁻²⁴ there), so 1 − tanh² is exactly 0, as in f64.
#[inline(always)]
pub fn tanh_f32<const FMA: bool>(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = horner::<_, _, FMA>(
        x2,
        [
            -2.760_768_5e-16,
            2.000_188e-13,
            -8.604_672e-11,
            5.122_297e-8,
            1.485_722_4e-5,
            6.372_619_3e-4,
            4.893_524_6e-3,
        ],
    );
    let q = horner::<_, _, FMA>(
        x2,
        [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3],
    );
    let t = x * p / q;
    if x.abs() >= CLAMP {
        1.0f32.copysign(x)
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: Copy + Into<f64>>(
        f: impl Fn(T) -> T,
        libm: impl Fn(f64) -> f64,
        xs: &[T],
        tol: f64,
        tiny: f64,
    ) {
        for &x in xs {
            let (got, want) = (f(x).into(), libm(x.into()));
            let ok = if want.is_nan() {
                got.is_nan()
            } else if want.is_infinite() || want == 0.0 {
                got == want
            } else {
                (got - want).abs() <= tol * want.abs() + tiny
            };
            assert!(ok, "f({}) = {got:e}, libm gives {want:e}", x.into());
        }
    }

    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f64> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f64 / n as f64)
    }

    #[test]
    fn exp_f64_matches_libm() {
        let mut xs: Vec<f64> = grid(-760.0, 720.0, 200_000).collect();
        xs.extend(grid(-1.0, 1.0, 10_001));
        xs.extend([
            0.0, -0.0, 1e-300, -1e-300, 709.78, 709.79, -708.4, -745.13, -745.2,
        ]);
        xs.extend([
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MAX,
            f64::MIN,
        ]);
        // ≤ 2 ulp for normal results; subnormal results carry fewer bits, hence the absolute part.
        check(exp_f64::<false>, f64::exp, &xs, 4.5e-16, 1e-323);
        check(exp_f64::<true>, f64::exp, &xs, 4.5e-16, 1e-323);
        assert_eq!(exp_f64::<false>(0.0), 1.0);
        assert_eq!(exp_f64::<true>(0.0), 1.0);
    }

    #[test]
    fn tanh_matches_libm() {
        let mut xs: Vec<f64> = grid(-30.0, 30.0, 200_001).collect();
        xs.extend(grid(-0.2, 0.2, 100_001));
        xs.extend([0.0, -0.0, 1e-300, -1e-30, 0.125, -0.125, 400.0, -800.0]);
        xs.extend([f64::INFINITY, f64::NEG_INFINITY, f64::NAN]);
        check(tanh_f64::<false>, f64::tanh, &xs, 4e-15, 0.0);
        check(tanh_f64::<true>, f64::tanh, &xs, 4e-15, 0.0);
        let xs32: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
        let libm32 = |x: f64| (x.tanh() as f32) as f64;
        check(tanh_f32::<false>, libm32, &xs32, 6e-7, 0.0);
        check(tanh_f32::<true>, libm32, &xs32, 6e-7, 0.0);
        assert!(tanh_f64::<false>(-0.0).is_sign_negative());
        for x in [7.905_311f32, 8.0, 1e30, f32::INFINITY] {
            assert_eq!((tanh_f32::<true>(x), tanh_f32::<false>(-x)), (1.0, -1.0));
        }
        assert!(tanh_f64::<true>(-0.0).is_sign_negative());
    }

    #[test]
    fn exp_neg_abs_matches_libm() {
        // Both signs, the subnormal results down to 0, and the clamps' neighbourhoods.
        let mut xs: Vec<f64> = grid(-800.0, 800.0, 200_000).collect();
        xs.extend(grid(-1.0, 1.0, 10_001));
        xs.extend([
            0.0, -0.0, 708.39, -745.13, 745.2, 746.0, 747.0, 1e300, -1e300,
        ]);
        xs.extend([f64::INFINITY, f64::NEG_INFINITY, f64::NAN]);
        let libm = |x: f64| (-x.abs()).exp();
        check(exp_neg_abs_f64::<false>, libm, &xs, 4.5e-16, 1e-323);
        check(exp_neg_abs_f64::<true>, libm, &xs, 4.5e-16, 1e-323);
        let mut xs32: Vec<f32> = grid(-110.0, 110.0, 200_000).map(|v| v as f32).collect();
        xs32.extend([
            0.0, -0.0, 87.3, -87.4, 103.2, -103.9, 104.0, 104.1, 1e30, -1e30,
        ]);
        xs32.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ]);
        let libm32 = |x: f64| ((-x.abs()).exp() as f32) as f64;
        check(exp_neg_abs_f32::<false>, libm32, &xs32, 2.5e-7, 3e-45);
        check(exp_neg_abs_f32::<true>, libm32, &xs32, 2.5e-7, 3e-45);
        // Bit for bit the general exp of −|x|: the same reduction, and one rounding either way.
        for &x in &xs32 {
            let (a, b) = (exp_neg_abs_f32::<true>(x), exp_f32::<true>(-x.abs()));
            assert!(
                a == b || (a.is_nan() && b.is_nan()),
                "{x}: {a:e} against {b:e}"
            );
        }
        assert_eq!(
            (exp_neg_abs_f32::<true>(0.0), exp_neg_abs_f64::<false>(-0.0)),
            (1.0, 1.0)
        );
    }

    #[test]
    fn exp_f32_matches_libm() {
        let mut xs: Vec<f32> = grid(-110.0, 95.0, 200_000).map(|v| v as f32).collect();
        xs.extend([0.0, -0.0, 1e-30, 88.72, 88.73, -87.3, -103.9, -104.0]);
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ]);
        // libm's f64 result rounded to f32 is the reference.
        let libm32 = |x: f64| (x.exp() as f32) as f64;
        check(exp_f32::<false>, libm32, &xs, 2.5e-7, 3e-45);
        check(exp_f32::<true>, libm32, &xs, 2.5e-7, 3e-45);
    }
}
