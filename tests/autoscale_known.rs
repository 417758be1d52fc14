//! The autoscaler in a dry run against upstreams of exactly known capacity, beside a
//! Kubernetes-HPA-style recommender fed the same signal (a simulation with known answers,
//! no clocks: #25's profiles).
//!
//! Each instance serves at most C = 4 requests at once for S ms (FCFS beyond that), so the
//! right count is ⌈λ·S / (C·0.7)⌉. The real fleet stays fixed (a dry run); weir samples
//! every second as its sampler does (requests started, and Little's law in flight: the time
//! completed requests spent, per second), averages over a 3 s signal window and fits the
//! traffic trend over the 15 s scale-down window. Both recommenders decide every second
//! from those signals, each from the count its own earlier decisions would have left.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use weir::config::AutoscaleConfig;
use weir::control::autoscaler::{Autoscaler, Signals};
use weir::control::evaluate::{
    self, DOWN_WINDOW_S, HpaReference, Profile, SIGNAL_WINDOW_S, SLOTS, Score, TARGET_IN_FLIGHT,
    TOLERANCE, profiles, score,
};
use weir::control::slope;

/// Seconds of samples, as indices into them.
const SIGNAL_WINDOW: usize = SIGNAL_WINDOW_S as usize;
const DOWN_WINDOW: usize = DOWN_WINDOW_S as usize;

/// One real instance: when each of its slots is next free (ms).
struct Instance {
    slots: [f64; SLOTS],
}

impl Instance {
    /// FCFS: the request takes the slot that frees first; returns when it completes.
    fn arrive(&mut self, t_ms: f64, service_ms: f64) -> f64 {
        let (index, free) = self
            .slots
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, t_ms));
        let done = free.max(t_ms) + service_ms;
        self.slots[index] = done;
        done
    }
}

/// What weir's sampler sees each second.
#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    in_flight: f64,
    mean_ms: f64,
}

fn run_load(profile: &Profile, seed: u64) -> Vec<Sample> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut fleet: Vec<Instance> = (0..profile.instances)
        .map(|_| Instance {
            slots: [0.0; SLOTS],
        })
        .collect();
    // (completion µs, time in system µs) of requests still in the system.
    let mut completions: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut samples = Vec::new();
    let (mut started, mut next_instance) = (0u64, 0usize);
    let gap_ms = |rng: &mut fastrand::Rng, at_ms: f64| {
        let rate = (profile.rate)(at_ms / 1000.0).max(1e-6);
        if profile.poisson {
            -(1.0 - rng.f64()).ln() / rate * 1000.0
        } else {
            1000.0 / rate
        }
    };
    let mut next_ms = gap_ms(&mut rng, 0.0);
    for second in 1..=profile.seconds {
        let end_ms = second as f64 * 1000.0;
        while next_ms < end_ms {
            let t_ms = next_ms;
            started += 1;
            // Round robin, weir's default balancer.
            let instance = &mut fleet[next_instance % profile.instances];
            next_instance += 1;
            let service_ms = (profile.service_ms)(t_ms / 1000.0);
            let done = instance.arrive(t_ms, service_ms);
            completions.push(Reverse((
                (done * 1000.0) as u64,
                ((done - t_ms) * 1000.0) as u64,
            )));
            next_ms += gap_ms(&mut rng, t_ms);
        }
        let (mut spent_us, mut count) = (0u64, 0u64);
        while let Some(Reverse((done_us, spent))) = completions.peek().copied()
            && done_us <= (end_ms * 1000.0) as u64
        {
            completions.pop();
            spent_us += spent;
            count += 1;
        }
        samples.push(Sample {
            rps: started as f64,
            in_flight: spent_us as f64 / 1e6,
            mean_ms: if count == 0 {
                0.0
            } else {
                spent_us as f64 / count as f64 / 1000.0
            },
        });
        started = 0;
    }
    samples
}

/// The signals weir's control loop builds from the samples up to second `t` (1-based).
fn signals_at(samples: &[Sample], t: usize, real_instances: u32) -> Signals {
    let window = &samples[t.saturating_sub(SIGNAL_WINDOW)..t];
    let n = window.len() as f64;
    let trend: Vec<(f64, f64)> = samples[t.saturating_sub(DOWN_WINDOW)..t]
        .iter()
        .enumerate()
        .map(|(i, s)| (i as f64, s.rps))
        .collect();
    Signals {
        now_ms: t as u64 * 1000,
        current: real_instances,
        rps: window.iter().map(|s| s.rps).sum::<f64>() / n,
        rps_trend: slope(&trend),
        rps_latest: window.last().map(|s| s.rps),
        in_flight: window.iter().map(|s| s.in_flight).sum::<f64>() / n,
        mean_ms: window.iter().map(|s| s.mean_ms).sum::<f64>() / n,
        p95_ms: window.iter().map(|s| s.mean_ms).fold(0.0, f64::max),
        ..Signals::default()
    }
}

fn config() -> AutoscaleConfig {
    let mut config = AutoscaleConfig::for_pool("known");
    config.min_instances = 1;
    config.max_instances = 40;
    config.target_in_flight = TARGET_IN_FLIGHT;
    config.tolerance = TOLERANCE;
    config.signal_window = Duration::from_secs(SIGNAL_WINDOW_S);
    config.scale_down_window = Duration::from_secs(DOWN_WINDOW_S);
    config.scale_up_cooldown = Duration::ZERO;
    config.scale_down_cooldown = Duration::ZERO;
    config.latency_high = Duration::from_secs(10);
    config.dry_run = true;
    config
}

/// Weir's and the reference's scores on one profile.
fn compare(profile: &Profile, seed: u64) -> (Score, Score) {
    let samples = run_load(profile, seed);
    let real = profile.instances as u32;
    let mut scaler = Autoscaler::new(config());
    let mut hpa = HpaReference::new(real, TARGET_IN_FLIGHT, TOLERANCE, DOWN_WINDOW_S);
    let (mut weir_counts, mut hpa_counts, mut right) = (Vec::new(), Vec::new(), Vec::new());
    for t in 1..=samples.len() {
        let signals = signals_at(&samples, t, real);
        let decision = scaler.decide(&signals);
        if std::env::var_os("WEIR_AUTOSCALE_SERIES").is_some() {
            println!(
                "t={t} decision: {} rec={} {:?}",
                decision.explanation,
                decision.recommended,
                decision
                    .recommendations
                    .iter()
                    .map(|r| (&r.rule, r.instances))
                    .collect::<Vec<_>>()
            );
        }
        weir_counts.push(decision.desired);
        hpa_counts.push(hpa.decide(t as u64, signals.in_flight));
        let at = t as f64 - 0.5;
        right.push(profile.right_count(at));
    }
    if std::env::var_os("WEIR_AUTOSCALE_SERIES").is_some() {
        for (t, ((w, h), r)) in weir_counts.iter().zip(&hpa_counts).zip(&right).enumerate() {
            println!("t={:>3} right={r:>2} weir={w:>2} hpa={h:>2}", t + 1);
        }
    }
    (
        score(&weir_counts, &right, DOWN_WINDOW),
        score(&hpa_counts, &right, DOWN_WINDOW),
    )
}

fn assert_goals(profile: &Profile, weir: &Score, hpa: &Score) {
    println!("{}\n{}", profile.name, evaluate::table(weir, hpa));
    assert!(
        weir.within_one >= hpa.within_one,
        "{}: within ±1 {:.3} < reference {:.3}",
        profile.name,
        weir.within_one,
        hpa.within_one
    );
    assert!(
        weir.extra_reversals <= 0,
        "{}: {} reversals beyond the right answer's",
        profile.name,
        weir.extra_reversals
    );
    assert!(
        weir.over_instance_seconds <= hpa.over_instance_seconds,
        "{}: over-provisioned {} > reference {}",
        profile.name,
        weir.over_instance_seconds,
        hpa.over_instance_seconds
    );
    assert!(
        weir.first_right_s.is_some_and(|t| t <= 12),
        "{}: first right count at {:?}",
        profile.name,
        weir.first_right_s
    );
}

#[test]
fn steps_with_even_arrivals_match_or_beat_the_hpa_reference() {
    let [profile, _] = profiles();
    let (weir, hpa) = compare(&profile, 1);
    assert_goals(&profile, &weir, &hpa);
}

#[test]
fn a_ramp_a_spike_and_a_capacity_change_with_poisson_arrivals_match_or_beat_it() {
    let [_, profile] = profiles();
    let seeds: Vec<u64> = match std::env::var("WEIR_AUTOSCALE_SEED") {
        Ok(seed) => vec![seed.parse().unwrap_or(1)],
        Err(_) => (1..=5).collect(),
    };
    for seed in seeds {
        let (weir, hpa) = compare(&profile, seed);
        assert_goals(&profile, &weir, &hpa);
    }
}
