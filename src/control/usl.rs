//! The Universal Scalability Law, fitted to (concurrency, throughput) observations:
//!
//! X(N) = λN / (1 + σ(N − 1) + κN(N − 1))
//!
//! σ is contention, κ coherency (crosstalk), λ the throughput of one unit of concurrency.
//! Dividing through gives N / X = a + b(N − 1) + cN(N − 1) with a = 1/λ, b = σ/λ,
//! c = κ/λ: linear in a, b, c, so an ordinary least-squares fit recovers the law.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Usl {
    pub lambda: f64,
    pub sigma: f64,
    pub kappa: f64,
    /// Share of the variance of X the fit explains.
    pub r_squared: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UslError {
    #[error("{0} observations; a fit needs at least 6")]
    TooFew(usize),
    #[error("concurrency only spans {low:.1} to {high:.1}; a fit needs a wider spread")]
    NarrowSpread { low: f64, high: f64 },
    #[error("the observations do not determine the curve")]
    Degenerate,
}

impl Usl {
    /// Fits to `(concurrency, throughput)` pairs; points with N < 0.5 or X ≤ 0 are skipped.
    pub fn fit(points: &[(f64, f64)]) -> Result<Usl, UslError> {
        let points: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|&(n, x)| n >= 0.5 && x > 0.0 && n.is_finite() && x.is_finite())
            .collect();
        if points.len() < 6 {
            return Err(UslError::TooFew(points.len()));
        }
        let low = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let high = points.iter().map(|p| p.0).fold(0.0, f64::max);
        if high < low * 2.0 || high - low < 2.0 {
            return Err(UslError::NarrowSpread { low, high });
        }
        // Normal equations for y = a + b·u + c·v with u = N − 1, v = N(N − 1).
        let mut m = [[0.0f64; 4]; 3];
        for &(n, x) in &points {
            let row = [1.0, n - 1.0, n * (n - 1.0)];
            let y = n / x;
            for i in 0..3 {
                for j in 0..3 {
                    m[i][j] += row[i] * row[j];
                }
                m[i][3] += row[i] * y;
            }
        }
        let [a, b, c] = solve3(m).ok_or(UslError::Degenerate)?;
        if a <= 0.0 {
            return Err(UslError::Degenerate);
        }
        let (sigma, kappa) = ((b / a).max(0.0), (c / a).max(0.0));
        let mut usl = Usl {
            lambda: 1.0 / a,
            sigma,
            kappa,
            r_squared: 0.0,
        };
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
        let total: f64 = points.iter().map(|p| (p.1 - mean).powi(2)).sum();
        let residual: f64 = points
            .iter()
            .map(|&(n, x)| (x - usl.throughput(n)).powi(2))
            .sum();
        usl.r_squared = if total > 0.0 {
            1.0 - residual / total
        } else {
            1.0
        };
        Ok(usl)
    }

    pub fn throughput(&self, n: f64) -> f64 {
        self.lambda * n / (1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0))
    }

    /// Mean latency at concurrency `n` (Little's law: R = N / X), in seconds.
    pub fn latency(&self, n: f64) -> f64 {
        n / self.throughput(n)
    }

    /// Concurrency of peak throughput, N* = √((1 − σ) / κ); `None` when κ = 0 (the curve
    /// only flattens towards λ/σ).
    pub fn saturation(&self) -> Option<f64> {
        (self.kappa > 0.0 && self.sigma < 1.0).then(|| ((1.0 - self.sigma) / self.kappa).sqrt())
    }

    /// The highest concurrency (up to saturation) whose mean latency stays within
    /// `latency_target` seconds, and the throughput there.
    pub fn at_latency(&self, latency_target: f64) -> Option<(f64, f64)> {
        let ceiling = self.saturation().unwrap_or(1e4);
        if self.latency(1.0) > latency_target {
            return None;
        }
        // Latency rises monotonically with N, so bisect.
        let (mut low, mut high) = (1.0, ceiling.max(1.0));
        if self.latency(high) <= latency_target {
            return Some((high, self.throughput(high)));
        }
        for _ in 0..60 {
            let mid = (low + high) / 2.0;
            if self.latency(mid) <= latency_target {
                low = mid;
            } else {
                high = mid;
            }
        }
        Some((low, self.throughput(low)))
    }
}

/// Gaussian elimination with partial pivoting on an augmented 3×4 matrix.
fn solve3(mut m: [[f64; 4]; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col];
        for (row, values) in m.iter_mut().enumerate() {
            if row != col {
                let factor = values[col] / pivot_row[col];
                for (value, pivot_value) in values.iter_mut().zip(pivot_row).skip(col) {
                    *value -= factor * pivot_value;
                }
            }
        }
    }
    Some([m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(truth: Usl, noise: f64, seed: u64) -> Vec<(f64, f64)> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (1..=64)
            .flat_map(|n| [n, n])
            .map(|n| {
                let n = n as f64;
                let jitter = 1.0 + noise * (2.0 * rng.f64() - 1.0);
                (n, truth.throughput(n) * jitter)
            })
            .collect()
    }

    #[test]
    fn the_fit_recovers_sigma_and_kappa_within_ten_percent() {
        for (sigma, kappa) in [(0.05, 0.001), (0.02, 0.0005), (0.1, 0.002)] {
            let truth = Usl {
                lambda: 120.0,
                sigma,
                kappa,
                r_squared: 1.0,
            };
            for seed in 0..5 {
                let fit = Usl::fit(&synthetic(truth, 0.02, seed)).unwrap();
                assert!(
                    (fit.sigma - sigma).abs() / sigma < 0.1,
                    "σ {} vs {sigma}",
                    fit.sigma
                );
                assert!(
                    (fit.kappa - kappa).abs() / kappa < 0.1,
                    "κ {} vs {kappa}",
                    fit.kappa
                );
                assert!((fit.lambda - 120.0).abs() / 120.0 < 0.1, "λ {}", fit.lambda);
                assert!(fit.r_squared > 0.95);
            }
        }
    }

    #[test]
    fn saturation_and_latency_sizing_follow_the_law() {
        let usl = Usl {
            lambda: 100.0,
            sigma: 0.04,
            kappa: 0.0016,
            r_squared: 1.0,
        };
        // N* = √(0.96 / 0.0016) = 24.49…
        assert!((usl.saturation().unwrap() - 24.495).abs() < 0.01);
        // R(1) = 10 ms; find N where R = 20 ms (below saturation).
        let (n, x) = usl.at_latency(0.02).unwrap();
        assert!((usl.latency(n) - 0.02).abs() < 1e-6);
        assert!((x - n / 0.02).abs() < 1e-6);
        // Past saturation more concurrency only adds latency: sizing stops at N*.
        let (n, _) = usl.at_latency(0.5).unwrap();
        assert!((n - 24.495).abs() < 0.01);
        assert_eq!(usl.at_latency(0.005), None, "even one request is slower");
    }

    #[test]
    fn too_little_data_is_refused_with_the_reason() {
        assert_eq!(Usl::fit(&[(1.0, 10.0); 3]), Err(UslError::TooFew(3)));
        let narrow: Vec<_> = (0..10).map(|i| (4.0 + i as f64 * 0.1, 40.0)).collect();
        assert!(matches!(
            Usl::fit(&narrow),
            Err(UslError::NarrowSpread { .. })
        ));
    }
}
