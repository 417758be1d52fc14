//! Property tests: inputs from outside (config text, header bytes, paths) never panic, and
//! balancer invariants hold for arbitrary pools.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use weir::balancer::{self, PickContext};
use weir::config::{PoolConfig, Strategy};
use weir::proxy::headers::{TraceparentPlan, request_ids, strip_hop_by_hop};
use weir::proxy::normalize::normalize_path;
use weir::upstream::Endpoint;

/// A pick with no exclusions, limits or panic mode.
fn plain_context(headers: &HeaderMap) -> PickContext<'_> {
    PickContext {
        client_ip: [10, 0, 0, 1].into(),
        headers,
        now_ms: 0,
        exclude: &[],
        max_in_flight: 0,
        generation: 0,
        ignore_health: false,
        avoid_stalled: false,
        preview: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_never_panics(text in "\\PC{0,400}") {
        let _ = weir::config::load_str(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_parsing_never_panics_on_tomlish_input(
        sections in proptest::collection::vec(
            prop_oneof![
                Just("[[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n".to_owned()),
                Just("[[routes]]\npool = \"p\"\n".to_owned()),
                Just("[pools.p]\nendpoints = [{ address = \"127.0.0.1:1\" }]\n".to_owned()),
                "[a-z_.\\[\\]]{1,12} = (\"[a-z0-9:./]{0,12}\"|[0-9]{1,6}|true|\\[\\])\n",
            ],
            0..8,
        )
    ) {
        let _ = weir::config::load_str(&sections.concat(), Path::new("fuzz.toml"));
    }

    #[test]
    fn header_processing_never_panics(
        pairs in proptest::collection::vec(("[a-zA-Z0-9-]{1,20}", proptest::collection::vec(any::<u8>(), 0..40)), 0..12)
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value)) {
                headers.append(name, value);
            }
        }
        let _ = request_ids(
            &headers,
            &HeaderName::from_static("x-request-id"),
            TraceparentPlan::None,
        );
        strip_hop_by_hop(&mut headers);
        prop_assert!(!headers.contains_key("connection"));
        prop_assert!(!headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn connection_named_fields_go_and_the_rest_stay(
        names in proptest::collection::btree_set("x-[a-z]{1,3}", 0..30),
        named in proptest::collection::vec(("x-[a-z]{1,3}", any::<bool>()), 0..6),
    ) {
        // Some fields, and a Connection field naming some of them (in any case) and some
        // absent ones: whatever the map's size, exactly the named ones go.
        let mut headers = HeaderMap::new();
        for name in &names {
            headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("v"));
        }
        headers.insert("host", HeaderValue::from_static("h"));
        let tokens: Vec<String> = named
            .iter()
            .map(|(name, upper)| if *upper { name.to_ascii_uppercase() } else { name.clone() })
            .chain(["close".to_owned(), "keep-alive".to_owned(), "Host".to_owned()])
            .collect();
        headers.insert("connection", HeaderValue::from_str(&tokens.join(", ")).unwrap());
        strip_hop_by_hop(&mut headers);
        for name in &names {
            let was_named = named.iter().any(|(n, _)| n == name);
            prop_assert_eq!(headers.contains_key(name.as_str()), !was_named, "{}", name);
        }
        prop_assert!(headers.contains_key("host"));
        prop_assert!(!headers.contains_key("connection"));
    }

    #[test]
    fn path_normalisation_never_panics_and_stays_rooted(path in "/[a-zA-Z0-9./%_-]{0,60}") {
        if let Ok(normalized) = normalize_path(&path) {
            prop_assert!(normalized.starts_with('/'));
            prop_assert!(!normalized.split('/').any(|s| s == ".." || s == "."));
            // Normalising twice changes nothing.
            let again = normalize_path(&normalized).unwrap().into_owned();
            prop_assert_eq!(again, normalized.into_owned());
        }
    }

    #[test]
    fn balancers_never_pick_an_unusable_endpoint_while_one_is_usable(
        weights in proptest::collection::vec(1u32..20, 1..12),
        draining in proptest::collection::vec(any::<bool>(), 12),
        strategy in prop_oneof![
            Just(Strategy::RoundRobin),
            Just(Strategy::Weighted),
            Just(Strategy::LeastConnections),
            Just(Strategy::Score),
            Just(Strategy::ConsistentHash),
        ],
        picks in 1usize..50,
    ) {
        let endpoints: Vec<Arc<Endpoint>> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Endpoint::with_defaults(&format!("127.0.0.1:{}", 2000 + i), *w).unwrap()))
            .collect();
        for (endpoint, drain) in endpoints.iter().zip(&draining) {
            if *drain {
                endpoint.set_draining(true, "property test");
            }
        }
        let mut config: PoolConfig = toml::from_str("").unwrap();
        config.strategy = strategy;
        if strategy == Strategy::ConsistentHash {
            config.hash = Some(toml::from_str("key = \"client_ip\"").unwrap());
        }
        let balancer = balancer::for_pool(&config);
        let headers = HeaderMap::new();
        let ctx = plain_context(&headers);
        let any_usable = endpoints.iter().any(|e| !e.is_draining());
        for _ in 0..picks {
            match balancer.pick(&endpoints, &ctx) {
                Some(picked) => prop_assert!(!picked.is_draining(), "picked a draining endpoint"),
                None => prop_assert!(!any_usable, "picked nothing while an endpoint was usable"),
            }
        }
    }

    /// Through the pool (as requests pick): endpoints draining, failing health checks or
    /// ejected by the breaker after consecutive connect failures are never picked while an
    /// available one exists.
    #[test]
    fn pools_never_pick_an_ejected_unhealthy_or_draining_endpoint_while_one_is_available(
        weights in proptest::collection::vec(1u32..20, 1..10),
        states in proptest::collection::vec(0u8..4, 10),
        strategy in prop_oneof![
            Just("round_robin"),
            Just("weighted"),
            Just("least_connections"),
            Just("score"),
            Just("consistent_hash"),
        ],
        picks in 1usize..40,
    ) {
        let endpoints: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{{ address = \"127.0.0.1:{}\", weight = {w} }}", 4000 + i))
            .collect();
        let hash = if strategy == "consistent_hash" { "hash = { key = \"client_ip\" }\n" } else { "" };
        let config: PoolConfig = toml::from_str(&format!(
            "strategy = \"{strategy}\"\n{hash}endpoints = [{}]\npassive = {{ consecutive_failures = 2, max_ejected_share = 1.0 }}\n",
            endpoints.join(", ")
        )).unwrap();
        let pool = weir::upstream::Pool::from_config("p", &config, None, None);
        for (endpoint, state) in pool.endpoints().iter().zip(&states) {
            match state {
                1 => endpoint.set_draining(true, "property test"),
                2 => endpoint.record_health_check(false, 1, 1, "property test"),
                3 => {
                    for _ in 0..2 {
                        let mut guard = endpoint.begin_request();
                        pool.report(&mut guard, weir::upstream::Outcome::ConnectFailed, std::time::Duration::from_millis(1));
                    }
                }
                _ => {}
            }
        }
        let now = pool.now_ms();
        let available: Vec<bool> = pool.endpoints().iter().map(|e| e.is_available(now)).collect();
        for (state, up) in states.iter().zip(&available) {
            prop_assert_eq!(*up, *state == 0, "state {} must decide availability", state);
        }
        let headers = HeaderMap::new();
        for i in 0..picks {
            let client: std::net::IpAddr = [10, 0, (i / 256) as u8, (i % 256) as u8].into();
            let any_available = available.iter().any(|a| *a);
            match pool.pick(client, &headers, &[]) {
                Ok(picked) if any_available => prop_assert!(
                    picked.is_available(now),
                    "picked {} while another was available",
                    picked.address
                ),
                // Panic mode: with none available, any endpoint but a draining one.
                Ok(picked) => prop_assert!(!picked.is_draining()),
                // Only when every endpoint drains.
                Err(_) => prop_assert!(pool.endpoints().iter().all(|e| e.is_draining())),
            }
        }
    }

    #[test]
    fn weighted_shares_follow_weights(weights in proptest::collection::vec(1u32..10, 2..6)) {
        let endpoints: Vec<Arc<Endpoint>> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Endpoint::with_defaults(&format!("127.0.0.1:{}", 3000 + i), *w).unwrap()))
            .collect();
        let mut config: PoolConfig = toml::from_str("").unwrap();
        config.strategy = Strategy::Weighted;
        let balancer = balancer::for_pool(&config);
        let headers = HeaderMap::new();
        let ctx = plain_context(&headers);
        let total: u32 = weights.iter().sum();
        let rounds = 20;
        let mut counts = vec![0u32; endpoints.len()];
        for _ in 0..total * rounds {
            let picked = balancer.pick(&endpoints, &ctx).unwrap();
            let index = endpoints.iter().position(|e| Arc::ptr_eq(e, picked)).unwrap();
            counts[index] += 1;
        }
        // A whole number of schedule cycles: shares are exact.
        for (count, weight) in counts.iter().zip(&weights) {
            prop_assert_eq!(*count, weight * rounds);
        }
    }
}
