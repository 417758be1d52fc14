//! Forecasts of a sampled series with prediction intervals, by `augurs`: MSTL
//! (seasonal-trend decomposition) with an AutoETS trend when the history covers at least
//! two seasons, AutoETS alone otherwise.

use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::prelude::*;
use serde::{Deserialize, Serialize};

/// Fewest points a forecast is attempted on.
pub const MIN_POINTS: usize = 12;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesForecast {
    /// Which model produced it, for the report.
    pub model: String,
    pub point: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    /// Coverage the interval is meant to have (0.9: 90 %).
    pub level: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{have} points is too short a history (at least {MIN_POINTS})")]
    TooShort { have: usize },
    #[error("the model could not be fitted: {0}")]
    Model(String),
}

/// Rolling-origin backtests used to calibrate the interval width.
const CALIBRATION_ORIGINS: usize = 6;

/// Forecasts `horizon` steps of `series`; `season` is the seasonal period in steps (for
/// instance one day), used when the series spans two of them.
///
/// The model's own intervals leave out the uncertainty of the decomposition and tend to
/// be narrow, so their width is calibrated: the model is refitted at earlier origins, and
/// the `level` quantile of |error| / half-width over those backtests scales the final
/// interval (split-conformal style; never narrower than the model's).
pub fn forecast(
    series: &[f64],
    season: Option<usize>,
    horizon: usize,
    level: f64,
) -> Result<SeriesForecast, ForecastError> {
    let mut raw = fit_and_predict(series, season, horizon, level)?;
    let mut ratios = Vec::new();
    let step = (horizon / 2).max(1);
    for i in 1..=CALIBRATION_ORIGINS {
        let Some(origin) = series.len().checked_sub(horizon + (i - 1) * step) else {
            break;
        };
        // Same model family as the final fit, or the calibration would measure another model.
        let same_family = season.is_none_or(|p| origin >= 2 * p) == raw.model.starts_with("MSTL");
        if origin < MIN_POINTS || !same_family {
            break;
        }
        let Ok(back) = fit_and_predict(&series[..origin], season, horizon, level) else {
            continue;
        };
        for (h, truth) in series[origin..].iter().take(horizon).enumerate() {
            let half = (back.upper[h] - back.lower[h]) / 2.0;
            if half > 0.0 {
                ratios.push((truth - back.point[h]).abs() / half);
            }
        }
    }
    if ratios.len() >= 10 {
        ratios.sort_by(f64::total_cmp);
        let index = ((ratios.len() as f64 * level).ceil() as usize).min(ratios.len()) - 1;
        let scale = ratios[index].max(1.0);
        for h in 0..raw.point.len() {
            let (point, half) = (raw.point[h], (raw.upper[h] - raw.lower[h]) / 2.0);
            raw.lower[h] = point - half * scale;
            raw.upper[h] = point + half * scale;
        }
        raw.model = format!(
            "{}; intervals widened ×{scale:.2} from {} backtest errors",
            raw.model,
            ratios.len()
        );
    }
    Ok(raw)
}

fn fit_and_predict(
    series: &[f64],
    season: Option<usize>,
    horizon: usize,
    level: f64,
) -> Result<SeriesForecast, ForecastError> {
    if series.len() < MIN_POINTS {
        return Err(ForecastError::TooShort { have: series.len() });
    }
    let model_error = |e: &dyn std::fmt::Display| ForecastError::Model(e.to_string());
    let (model, forecast) = match season.filter(|&p| p >= 2 && series.len() >= 2 * p) {
        Some(period) => {
            let trend = AutoETS::non_seasonal().into_trend_model();
            let fitted = MSTLModel::new(vec![period], trend)
                .fit(series)
                .map_err(|e| model_error(&e))?;
            let forecast = fitted
                .predict(horizon, level)
                .map_err(|e| model_error(&e))?;
            (
                format!("MSTL (season {period} steps) + AutoETS trend"),
                forecast,
            )
        }
        None => {
            let fitted = AutoETS::non_seasonal()
                .fit(series)
                .map_err(|e| model_error(&e))?;
            let forecast = fitted
                .predict(horizon, level)
                .map_err(|e| model_error(&e))?;
            ("AutoETS (no season in the history)".to_owned(), forecast)
        }
    };
    let intervals = forecast
        .intervals
        .ok_or_else(|| ForecastError::Model("no prediction intervals".into()))?;
    let finite = |values: Vec<f64>| -> Result<Vec<f64>, ForecastError> {
        if values.iter().all(|v| v.is_finite()) {
            Ok(values)
        } else {
            Err(ForecastError::Model("non-finite forecast".into()))
        }
    };
    Ok(SeriesForecast {
        model,
        point: finite(forecast.point)?,
        lower: finite(intervals.lower)?,
        upper: finite(intervals.upper)?,
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily-like cycle of 24 steps around 100 with Gaussian noise (σ = 5).
    fn seasonal(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len)
            .map(|t| {
                let phase = 2.0 * std::f64::consts::PI * t as f64 / 24.0;
                100.0 + 20.0 * phase.sin() + 5.0 * normal(&mut rng)
            })
            .collect()
    }

    fn normal(rng: &mut fastrand::Rng) -> f64 {
        // Box–Muller.
        let (u, v) = (rng.f64().max(1e-12), rng.f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    #[test]
    fn backtests_cover_the_truth_at_the_stated_level() {
        let (mut covered, mut total) = (0, 0);
        for seed in 0..20 {
            let series = seasonal(24 * 8, seed);
            for origin in [24 * 5, 24 * 6, 24 * 7] {
                let f = forecast(&series[..origin], Some(24), 12, 0.9).unwrap();
                for (h, truth) in series[origin..origin + 12].iter().enumerate() {
                    total += 1;
                    covered += usize::from(f.lower[h] <= *truth && *truth <= f.upper[h]);
                }
            }
        }
        let coverage = covered as f64 / total as f64;
        eprintln!("90 % interval coverage: {coverage:.3} over {total} forecasts");
        assert!((0.85..=0.95).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    fn a_short_history_is_refused_and_a_trend_is_followed() {
        assert!(matches!(
            forecast(&[1.0; 5], None, 3, 0.9),
            Err(ForecastError::TooShort { have: 5 })
        ));
        let rising: Vec<f64> = (0..40).map(|t| 10.0 + 2.0 * t as f64).collect();
        let f = forecast(&rising, None, 5, 0.9).unwrap();
        assert!((f.point[4] - 98.0).abs() < 5.0, "{:?}", f.point);
        assert!(f.model.starts_with("AutoETS"));
    }
}
