//! Anomalies by robust z-score: z = 0.6745 (x − median) / MAD. Median and MAD ignore the
//! outliers they are meant to find, where mean and σ are dragged by them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Anomaly {
    pub index: usize,
    pub value: f64,
    pub z: f64,
    pub median: f64,
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Points of `series` whose robust z-score exceeds `threshold` in absolute value.
pub fn find(series: &[f64], threshold: f64) -> Vec<Anomaly> {
    if series.len() < 8 {
        return Vec::new();
    }
    let center = median(&mut series.to_vec());
    let mut deviations: Vec<f64> = series.iter().map(|x| (x - center).abs()).collect();
    let mad = median(&mut deviations);
    // A flat series has MAD 0: fall back to the mean absolute deviation (scaled to match).
    let spread = if mad > 0.0 {
        mad
    } else {
        let mean_abs = series.iter().map(|x| (x - center).abs()).sum::<f64>() / series.len() as f64;
        mean_abs * 1.2533 * 0.6745
    };
    if spread <= 0.0 {
        return Vec::new();
    }
    series
        .iter()
        .enumerate()
        .filter_map(|(index, &value)| {
            let z = 0.6745 * (value - center) / spread;
            (z.abs() > threshold).then_some(Anomaly {
                index,
                value,
                z,
                median: center,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spikes_are_found_and_noise_is_not() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut series: Vec<f64> = (0..200).map(|_| 100.0 + 10.0 * (rng.f64() - 0.5)).collect();
        series[50] = 400.0;
        series[120] = 5.0;
        let found = find(&series, 3.5);
        let at: Vec<usize> = found.iter().map(|a| a.index).collect();
        assert_eq!(at, vec![50, 120]);
        assert!(found[0].z > 3.5 && found[1].z < -3.5);
        assert!(find(&[1.0; 50], 3.5).is_empty());
    }
}
