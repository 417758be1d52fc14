//! Judging an autoscaler against the right answer, per second: how often it is within one
//! instance of it, how many instance-seconds it over-provisions, how often it changes and
//! turns, how soon it first gets it right; and a Kubernetes-HPA-style recommender to judge
//! it beside. Used by the known-capacity simulation (`tests/autoscale_known.rs`) and the
//! end-to-end bench (`benches/autoscale_e2e.rs`).

use std::collections::VecDeque;

/// #25's known capacity: each instance serves at most this many requests at once …
pub const SLOTS: usize = 4;
/// … and should run at 70 % of them, so the target in flight per instance is 2.8.
pub const TARGET_IN_FLIGHT: f64 = SLOTS as f64 * 0.7;
/// The tolerance band both recommenders use.
pub const TOLERANCE: f64 = 0.1;
/// The signal window and the scale-down window, in seconds (samples are 1 s apart).
pub const SIGNAL_WINDOW_S: u64 = 3;
pub const DOWN_WINDOW_S: u64 = 15;

/// A load profile: requests per second and service time (ms) at second `t`.
pub struct Profile {
    /// Short name (`steps`, `spike`) to pick a profile by.
    pub key: &'static str,
    pub name: &'static str,
    pub seconds: u64,
    /// The real fleet, which a dry run leaves as it is.
    pub instances: usize,
    /// Poisson arrivals; otherwise evenly spaced.
    pub poisson: bool,
    pub rate: fn(f64) -> f64,
    pub service_ms: fn(f64) -> f64,
}

impl Profile {
    /// The right count at second `t`: ⌈λ·S / (C·0.7)⌉.
    pub fn right_count(&self, t: f64) -> u32 {
        let in_flight = (self.rate)(t) * (self.service_ms)(t) / 1000.0;
        (in_flight / TARGET_IN_FLIGHT).ceil().max(1.0) as u32
    }
}

/// #25's two profiles: steps with even arrivals, and a ramp, a spike and a capacity
/// change with Poisson arrivals.
pub fn profiles() -> [Profile; 2] {
    [
        Profile {
            key: "steps",
            name: "200 → 800 → 300 req/s, 70 s each, even arrivals, 8 instances",
            seconds: 210,
            instances: 8,
            poisson: false,
            rate: |t| match t {
                t if t < 70.0 => 200.0,
                t if t < 140.0 => 800.0,
                _ => 300.0,
            },
            service_ms: |_| 20.0,
        },
        Profile {
            key: "spike",
            name: "ramp 200 → 800, 10 s spike to 1 200, 500 req/s, S 20 → 30 ms at 180 s; Poisson; 10 instances",
            seconds: 260,
            instances: 10,
            poisson: true,
            rate: |t| match t {
                t if t < 60.0 => 200.0 + 600.0 * t / 60.0,
                t if t < 100.0 => 800.0,
                t if t < 110.0 => 1200.0,
                _ => 500.0,
            },
            service_ms: |t| if t < 180.0 { 20.0 } else { 30.0 },
        },
    ]
}

/// The Kubernetes HPA's algorithm with the v2 defaults: a tolerance band around the
/// target, scale-down stabilization as the highest recommendation over its window, and
/// scale-up by at most +4 instances or +100 % per 15 s. Its count follows its own
/// decisions (as if each were applied at once).
#[derive(Debug, Clone)]
pub struct HpaReference {
    current: u32,
    target_per_instance: f64,
    tolerance: f64,
    down_window_s: u64,
    /// (second, recommendation) within the scale-down window.
    recent: VecDeque<(u64, u32)>,
    /// (second, count) after each change within the last 15 s, for the scale-up policy.
    changes: VecDeque<(u64, u32)>,
}

impl HpaReference {
    pub fn new(start: u32, target_per_instance: f64, tolerance: f64, down_window_s: u64) -> Self {
        Self {
            current: start,
            target_per_instance,
            tolerance,
            down_window_s,
            recent: VecDeque::new(),
            changes: VecDeque::new(),
        }
    }

    /// The count at second `t` for a metric whose pool-wide total is `total` (the HPA
    /// averages it over its instances).
    pub fn decide(&mut self, t: u64, total: f64) -> u32 {
        let ratio = total / f64::from(self.current.max(1)) / self.target_per_instance;
        let recommended = if (ratio - 1.0).abs() <= self.tolerance {
            self.current
        } else {
            (f64::from(self.current) * ratio).ceil().max(1.0) as u32
        };
        self.recent.push_back((t, recommended));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| t - at >= self.down_window_s)
        {
            self.recent.pop_front();
        }
        let mut desired = recommended;
        if recommended < self.current {
            let highest = self.recent.iter().map(|(_, n)| *n).max();
            desired = highest.unwrap_or(recommended).min(self.current);
        } else if recommended > self.current {
            while self.changes.front().is_some_and(|(at, _)| t - at >= 15) {
                self.changes.pop_front();
            }
            let base = self.changes.front().map_or(self.current, |(_, n)| *n);
            desired = desired.min((base * 2).max(base + 4));
        }
        if desired != self.current {
            self.current = desired;
            self.changes.push_back((t, desired));
        }
        desired
    }
}

/// How a series of counts (one per second) compares with the right counts.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Score {
    /// Share of seconds within one instance of the right count.
    pub within_one: f64,
    /// Share of settled seconds (the right count unchanged for `settle_s`) exactly right.
    pub exact_settled: f64,
    /// Instances beyond the right count, summed over the seconds.
    pub over_instance_seconds: u64,
    pub changes: u32,
    /// Direction reversals beyond those of the right count, from the first right second
    /// on (the correction of the starting count is what `first_right_s` measures).
    pub extra_reversals: i64,
    /// Seconds (1-based) until the count was first right.
    pub first_right_s: Option<usize>,
}

/// Scores `counts` against `right` (equal lengths, one per second).
pub fn score(counts: &[u32], right: &[u32], settle_s: usize) -> Score {
    let n = counts.len().max(1) as f64;
    let within = counts
        .iter()
        .zip(right)
        .filter(|(c, r)| c.abs_diff(**r) <= 1)
        .count();
    let settled: Vec<usize> = (settle_s..right.len())
        .filter(|&i| right[i - settle_s..=i].iter().all(|r| *r == right[i]))
        .collect();
    let exact = settled.iter().filter(|&&i| counts[i] == right[i]).count();
    let first_right = counts.iter().zip(right).position(|(c, r)| c == r);
    let from = first_right.unwrap_or(0);
    Score {
        within_one: within as f64 / n,
        exact_settled: exact as f64 / settled.len().max(1) as f64,
        over_instance_seconds: counts
            .iter()
            .zip(right)
            .map(|(c, r)| u64::from(c.saturating_sub(*r)))
            .sum(),
        changes: counts.windows(2).filter(|w| w[0] != w[1]).count() as u32,
        extra_reversals: reversals(&counts[from..]) - reversals(&right[from..]),
        first_right_s: first_right.map(|i| i + 1),
    }
}

/// Times a series turns from rising to falling or back (flat steps do not count).
pub fn reversals(counts: &[u32]) -> i64 {
    let mut last = 0i64;
    let mut turns = 0;
    for pair in counts.windows(2) {
        let step = (i64::from(pair[1]) - i64::from(pair[0])).signum();
        if step != 0 {
            if last != 0 && step != last {
                turns += 1;
            }
            last = step;
        }
    }
    turns
}

/// The score table for one profile, weir beside the reference.
pub fn table(weir: &Score, reference: &Score) -> String {
    let pct = |v: f64| format!("{:.0} %", v * 100.0);
    let first = |s: &Score| s.first_right_s.map_or("never".into(), |t| format!("{t} s"));
    let rows = [
        (
            "within ±1 of the right count",
            pct(weir.within_one),
            pct(reference.within_one),
        ),
        (
            "exact, once settled",
            pct(weir.exact_settled),
            pct(reference.exact_settled),
        ),
        (
            "over-provisioned instance-seconds",
            weir.over_instance_seconds.to_string(),
            reference.over_instance_seconds.to_string(),
        ),
        (
            "changes",
            weir.changes.to_string(),
            reference.changes.to_string(),
        ),
        (
            "reversals beyond the right answer's",
            weir.extra_reversals.to_string(),
            reference.extra_reversals.to_string(),
        ),
        ("first right count", first(weir), first(reference)),
    ];
    let mut out = format!("  {:<38} {:>8} {:>10}\n", "measure", "weir", "HPA-style");
    for (measure, a, b) in rows {
        out += &format!("  {measure:<38} {a:>8} {b:>10}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_what_they_say() {
        let right = [2, 2, 6, 6, 6, 3, 3, 3];
        let counts = [8, 2, 3, 6, 7, 6, 4, 3];
        let s = score(&counts, &right, 2);
        assert_eq!(s.first_right_s, Some(2));
        assert_eq!(s.over_instance_seconds, 6 + 1 + 3 + 1);
        assert_eq!(s.changes, 7);
        // From the first right second: up, up, up, down, down, down (one turn); the right
        // count turns once too.
        assert_eq!(s.extra_reversals, 0);
        assert_eq!(reversals(&[1, 2, 1, 2]), 2);
        // Within one: seconds 2, 4, 5, 7, 8 of 8.
        assert!((s.within_one - 5.0 / 8.0).abs() < 1e-9);
    }

    #[test]
    fn the_reference_follows_the_hpa_algorithm() {
        // Target 2 per instance, tolerance 10 %, scale-down window 3 s.
        let mut hpa = HpaReference::new(8, 2.0, 0.1, 3);
        assert_eq!(hpa.decide(1, 4.0), 2, "a new loop scales in at once");
        assert_eq!(hpa.decide(2, 4.2), 2, "within tolerance");
        assert_eq!(
            hpa.decide(3, 40.0),
            6,
            "scale-up: at most +4 (or +100 %) per 15 s"
        );
        assert_eq!(hpa.decide(4, 40.0), 6, "still within the same 15 s");
        assert_eq!(hpa.decide(18, 40.0), 12, "the next 15 s may double");
        assert_eq!(
            hpa.decide(19, 4.0),
            12,
            "the scale-down window holds the highest"
        );
        assert_eq!(hpa.decide(22, 4.0), 2);
    }
}
