//! Small polynomial least squares, enough for lines and parabolas in log space.

/// Least-squares polynomial `y ≈ Σ c_k x^k` (coefficients lowest power first).
///
/// The normal equations are solved in a centred and scaled variable, because log N or
/// log C values around 20–50 make the raw Vandermonde system badly conditioned; the
/// coefficients are then mapped back to powers of `x`. `None` when the points cannot
/// determine the polynomial (fewer distinct x values than coefficients).
pub fn polyfit(xs: &[f64], ys: &[f64], degree: usize) -> Option<Vec<f64>> {
    assert_eq!(xs.len(), ys.len(), "polyfit needs as many x as y values");
    let k = degree + 1;
    let mut distinct: Vec<f64> = xs.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < k {
        return None;
    }
    let centre = xs.iter().sum::<f64>() / xs.len() as f64;
    let scale = xs.iter().map(|x| (x - centre).abs()).fold(0.0, f64::max);

    // Normal equations (VᵀV) c = Vᵀy in t = (x - centre) / scale.
    let mut m = vec![vec![0.0; k + 1]; k];
    for (&x, &y) in xs.iter().zip(ys) {
        let t = (x - centre) / scale;
        let powers: Vec<f64> = (0..k).map(|p| t.powi(p as i32)).collect();
        for row in 0..k {
            for col in 0..k {
                m[row][col] += powers[row] * powers[col];
            }
            m[row][k] += powers[row] * y;
        }
    }
    let in_t = solve(m)?;
    Some(expand(&in_t, centre, scale))
}

/// Gaussian elimination with partial pivoting on an augmented `k × (k+1)` matrix.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = m.len();
    for col in 0..k {
        let pivot = (col..k).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for row in &mut m[col + 1..] {
            let factor = row[col] / pivot_row[col];
            for (value, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                *value -= factor * p;
            }
        }
    }
    let mut x = vec![0.0; k];
    for row in (0..k).rev() {
        let tail: f64 = (row + 1..k).map(|c| m[row][c] * x[c]).sum();
        x[row] = (m[row][k] - tail) / m[row][row];
    }
    Some(x)
}

/// Rewrites `Σ d_p ((x - centre)/scale)^p` as `Σ c_q x^q` via the binomial expansion.
fn expand(d: &[f64], centre: f64, scale: f64) -> Vec<f64> {
    let mut c = vec![0.0; d.len()];
    for (p, &dp) in d.iter().enumerate() {
        let factor = dp / scale.powi(p as i32);
        let mut binom = 1.0;
        for (q, cq) in c.iter_mut().enumerate().take(p + 1) {
            // term of (x - centre)^p with x^q: binom(p, q) (-centre)^(p-q)
            *cq += factor * binom * (-centre).powi((p - q) as i32);
            binom = binom * (p - q) as f64 / (q + 1) as f64;
        }
    }
    c
}
