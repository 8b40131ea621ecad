use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::TimeZone;
use clickstream_event::{Limits, decode};

use super::*;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

/// `count` messages from `config` on a clock advancing 10 ms per message, with each clock value.
fn run(config: SimulatorConfig, count: usize) -> Vec<(DateTime<Utc>, Generated)> {
    let mut simulator = Simulator::new(config);
    (0..count)
        .map(|n| {
            let now = start() + Duration::milliseconds(10 * n as i64);
            (now, simulator.next(now))
        })
        .collect()
}

fn events(generated: &[(DateTime<Utc>, Generated)]) -> Vec<&ClickEvent> {
    generated
        .iter()
        .filter_map(|(_, g)| match g {
            Generated::Event(event) => Some(event),
            Generated::Poison { .. } => None,
        })
        .collect()
}

fn seeded(seed: u64) -> SimulatorConfig {
    SimulatorConfig {
        seed,
        ..Default::default()
    }
}

#[test]
fn same_seed_and_clock_give_the_same_stream_ids_included() {
    let config = SimulatorConfig {
        seed: 42,
        bad_ratio: 0.05,
        late_ratio: 0.05,
        ..Default::default()
    };
    let first = run(config.clone(), 20_000);
    let second = run(config, 20_000);
    assert!(first == second, "same seed, same clock: same messages");

    let other = run(seeded(43), 20_000);
    let differing = first
        .iter()
        .zip(&other)
        .filter(|((_, a), (_, b))| a.payload() != b.payload())
        .count();
    assert!(
        differing > 19_000,
        "another seed, another stream: {differing}"
    );
}

#[test]
fn same_seed_under_another_clock_keeps_the_content_but_not_the_ids() {
    let mut a = Simulator::new(seeded(7));
    let mut b = Simulator::new(seeded(7));
    let shift = Duration::days(3) + Duration::milliseconds(1);
    let mut ids = HashSet::new();
    for n in 0..5_000 {
        let now = start() + Duration::milliseconds(10 * n);
        let (Generated::Event(x), Generated::Event(y)) = (a.next(now), b.next(now + shift)) else {
            panic!("no poison without bad_ratio");
        };
        assert!(
            ids.insert(x.event_id) && ids.insert(y.event_id),
            "ids repeat"
        );
        assert_eq!(x.timestamp + shift, y.timestamp);
        let strip = |e: &ClickEvent| {
            let mut e = e.clone();
            e.event_id = Uuid::nil();
            e.session_id = Uuid::nil();
            e.timestamp = start();
            e
        };
        assert_eq!(strip(&x), strip(&y), "message {n}");
    }
}

#[test]
fn valid_events_decode_and_round_trip() {
    for (now, generated) in run(seeded(1), 20_000) {
        let Generated::Event(event) = &generated else {
            panic!("no poison without bad_ratio");
        };
        assert_eq!(
            decode(Some(&generated.payload()), &Limits::default(), now).as_ref(),
            Ok(event)
        );
        assert_eq!(generated.key(), event.user_id);
        assert_eq!(event.timestamp, now);
    }
}

#[test]
fn all_event_types_appear_and_the_funnel_is_monotone_and_plausible() {
    let generated = run(seeded(2), 200_000);
    let events = events(&generated);
    let mut per_type: BTreeMap<EventType, usize> = BTreeMap::new();
    let mut sessions: HashMap<Uuid, HashSet<EventType>> = HashMap::new();
    for event in &events {
        *per_type.entry(event.event_type).or_default() += 1;
        sessions
            .entry(event.session_id)
            .or_default()
            .insert(event.event_type);
    }
    for event_type in EventType::ALL {
        assert!(
            per_type.get(&event_type) > Some(&0),
            "{event_type}: {per_type:?}"
        );
    }
    let views = per_type[&EventType::PageView];
    let carts = per_type[&EventType::AddToCart];
    let purchases = per_type[&EventType::Purchase];
    assert!(views > carts && carts > purchases, "{per_type:?}");

    let share = |t: EventType| {
        sessions.values().filter(|types| types.contains(&t)).count() as f64 / sessions.len() as f64
    };
    let (carted, bought) = (share(EventType::AddToCart), share(EventType::Purchase));
    eprintln!(
        "{} sessions, {:.1} events each; carted {carted:.3}, bought {bought:.3}; {per_type:?}",
        sessions.len(),
        events.len() as f64 / sessions.len() as f64
    );
    assert!(
        (0.05..0.40).contains(&carted),
        "share of sessions with add_to_cart {carted}"
    );
    assert!(
        (0.01..0.10).contains(&bought),
        "share of sessions with a purchase {bought}"
    );
    assert!(
        sessions.len() > 10_000,
        "sessions turn over: {}",
        sessions.len()
    );
}

#[test]
fn every_purchase_follows_an_add_to_cart_of_its_product_in_its_session() {
    let generated = run(seeded(3), 100_000);
    let mut carts: HashMap<Uuid, Vec<(String, u16)>> = HashMap::new();
    let mut purchases = 0;
    for event in events(&generated) {
        match event.event_type {
            EventType::AddToCart => carts.entry(event.session_id).or_default().push((
                event.product_id.clone().expect("product_id"),
                event.quantity.expect("quantity"),
            )),
            EventType::Purchase => {
                purchases += 1;
                let line = (
                    event.product_id.clone().expect("product_id"),
                    event.quantity.expect("quantity"),
                );
                let cart = carts.entry(event.session_id).or_default();
                let at = cart
                    .iter()
                    .position(|l| *l == line)
                    .unwrap_or_else(|| panic!("purchase of {line:?} never added to the cart"));
                cart.remove(at);
                assert!(event.price.expect("price").cents() > 0);
                assert_eq!(event.page_url, "/checkout");
            }
            _ => {
                assert_eq!(
                    (event.product_id.as_ref(), event.price, event.quantity),
                    (None, None, None),
                    "{event:?}"
                );
            }
        }
    }
    assert!(purchases > 100, "{purchases} purchases");
}

#[test]
fn prices_spread_realistically() {
    let generated = run(seeded(4), 200_000);
    let mut prices: Vec<i64> = events(&generated)
        .iter()
        .filter(|e| e.event_type == EventType::Purchase)
        .map(|e| e.price.expect("price").cents())
        .collect();
    prices.sort_unstable();
    let at = |q: f64| prices[((prices.len() - 1) as f64 * q) as usize];
    assert!(prices.len() > 500, "{} purchases", prices.len());
    assert!(at(0.05) < 1_500, "cheap items exist: p5 = {}", at(0.05));
    assert!(
        (1_000..10_000).contains(&at(0.5)),
        "median price {}",
        at(0.5)
    );
    assert!(
        at(0.95) > 10_000,
        "expensive items exist: p95 = {}",
        at(0.95)
    );
    assert!(prices.iter().all(|&c| (100..=400_000).contains(&c)));
}

#[test]
fn a_long_run_touches_nearly_every_user() {
    let generated = run(seeded(5), 100_000);
    let users: HashSet<&str> = generated.iter().map(|(_, g)| g.key()).collect();
    assert!(users.len() >= 475, "{} of 500 users", users.len());
    assert!(users.iter().all(|u| u.len() == 9 && u.starts_with("user_")));
    assert!(users.contains("user_0000") && users.contains("user_0499"));
}

#[test]
fn user_ids_are_wide_enough_for_many_users() {
    let mut simulator = Simulator::new(SimulatorConfig {
        users: 20_000,
        ..seeded(6)
    });
    let key = simulator.next(start()).key().to_owned();
    assert_eq!(key.len(), "user_00000".len(), "{key}");
}

#[test]
fn a_session_keeps_its_user_device_browser_country_and_referrer() {
    let generated = run(seeded(6), 100_000);
    let mut seen: HashMap<Uuid, (String, String, String, String, String)> = HashMap::new();
    let mut per_user: HashMap<String, (String, String, String)> = HashMap::new();
    for event in events(&generated) {
        let attributes = (
            event.user_id.clone(),
            event.device_type.clone(),
            event.browser.clone(),
            event.country.clone(),
            event.referrer.clone(),
        );
        assert_eq!(
            seen.entry(event.session_id)
                .or_insert_with(|| attributes.clone()),
            &attributes
        );
        let user = (
            event.device_type.clone(),
            event.browser.clone(),
            event.country.clone(),
        );
        assert_eq!(
            per_user
                .entry(event.user_id.clone())
                .or_insert_with(|| user.clone()),
            &user
        );
    }
    let devices: HashSet<&str> = per_user.values().map(|u| u.0.as_str()).collect();
    let countries: HashSet<&str> = per_user.values().map(|u| u.2.as_str()).collect();
    let referrers: HashSet<&str> = seen.values().map(|s| s.4.as_str()).collect();
    assert_eq!(devices.len(), 3, "{devices:?}");
    assert!(countries.len() >= 10, "{countries:?}");
    assert!(referrers.contains("direct") && referrers.contains("google.com"));
}

#[test]
fn a_session_ends_after_inactivity() {
    // One user: every message is theirs, so gaps between messages are the user's idle time.
    let mut simulator = Simulator::new(SimulatorConfig {
        users: 1,
        ..seeded(8)
    });
    let mut now = start();
    let mut last = match simulator.next(now) {
        Generated::Event(event) => event,
        Generated::Poison { .. } => unreachable!(),
    };
    let mut continued = 0;
    for n in 0..2_000 {
        let idle = if n % 2 == 0 {
            Duration::seconds(20)
        } else {
            Duration::minutes(31)
        };
        now += idle;
        let Generated::Event(event) = simulator.next(now) else {
            unreachable!()
        };
        if idle > Duration::minutes(30) {
            assert_ne!(event.session_id, last.session_id, "31 idle minutes");
            assert_eq!(event.event_type, EventType::PageView, "a new session lands");
        } else if event.session_id == last.session_id {
            continued += 1;
        }
        last = event;
    }
    assert!(continued > 500, "short gaps mostly continue: {continued}");
}

#[test]
fn every_poison_kind_is_produced_and_rejected_for_its_reason() {
    let config = SimulatorConfig {
        bad_ratio: 0.3,
        ..seeded(9)
    };
    let mut per_kind: BTreeMap<PoisonKind, usize> = BTreeMap::new();
    let mut details: BTreeMap<PoisonKind, HashSet<String>> = BTreeMap::new();
    let generated = run(config, 30_000);
    for (now, message) in &generated {
        match message {
            Generated::Event(event) => {
                assert!(decode(Some(&event.to_json()), &Limits::default(), *now).is_ok());
            }
            Generated::Poison { kind, key, payload } => {
                *per_kind.entry(*kind).or_default() += 1;
                assert!(key.starts_with("user_"), "{key}");
                let rejection = decode(Some(payload), &Limits::default(), *now)
                    .expect_err(&format!("{kind:?} must not decode"));
                assert_eq!(
                    rejection.reason,
                    kind.expected_reason(),
                    "{kind:?}: {rejection}\n{}",
                    String::from_utf8_lossy(&payload[..payload.len().min(400)])
                );
                // Oversized must still be a message a broker with the default 1 MB limit takes.
                assert!(payload.len() < 900 * 1024);
                let detail: String = rejection.detail.chars().take(24).collect();
                details.entry(*kind).or_default().insert(detail);
            }
        }
    }
    let poison: usize = per_kind.values().sum();
    assert!(
        (8_400..9_600).contains(&poison),
        "30% of 30000 are poison: {poison}"
    );
    for kind in PoisonKind::ALL {
        let n = per_kind.get(&kind).copied().unwrap_or(0);
        assert!(n > 700, "{kind:?} produced {n} times: {per_kind:?}");
    }
    // The kinds with variants really vary.
    for kind in [
        PoisonKind::MissingField,
        PoisonKind::WrongType,
        PoisonKind::OutOfRange,
    ] {
        assert!(details[&kind].len() >= 4, "{kind:?}: {:?}", details[&kind]);
    }
}

#[test]
fn poison_kinds_map_one_to_one_onto_reject_reasons() {
    let reasons: HashSet<RejectReason> = PoisonKind::ALL
        .iter()
        .map(|k| k.expected_reason())
        .collect();
    assert_eq!(reasons, RejectReason::ALL.into_iter().collect());
}

#[test]
fn late_events_are_late_by_minutes_to_hours_and_still_valid() {
    let config = SimulatorConfig {
        late_ratio: 0.2,
        ..seeded(10)
    };
    let generated = run(config, 20_000);
    let mut late = 0;
    for (now, message) in &generated {
        let Generated::Event(event) = message else {
            panic!("no poison without bad_ratio");
        };
        if event.timestamp == *now {
            continue;
        }
        late += 1;
        let lag = *now - event.timestamp;
        assert!(
            lag >= Duration::minutes(2) && lag <= Duration::hours(6) + Duration::seconds(1),
            "late by {lag}"
        );
        assert_eq!(
            decode(Some(&message.payload()), &Limits::default(), *now).as_ref(),
            Ok(event)
        );
    }
    assert!((3_700..4_300).contains(&late), "20% of 20000 late: {late}");
}

#[test]
fn ratios_do_not_change_the_walk() {
    let clean = run(seeded(11), 5_000);
    let dirty = run(
        SimulatorConfig {
            bad_ratio: 0.1,
            late_ratio: 0.1,
            ..seeded(11)
        },
        5_000,
    );
    let mut same = 0;
    for ((_, a), (_, b)) in clean.iter().zip(&dirty) {
        if let (Generated::Event(a), Generated::Event(b)) = (a, b) {
            assert_eq!(
                (a.event_id, &a.user_id, a.event_type, &a.page_url),
                (b.event_id, &b.user_id, b.event_type, &b.page_url)
            );
            same += 1;
        }
    }
    assert!(same > 4_000, "{same}");
}

#[test]
fn stats_count_what_was_generated() {
    let mut simulator = Simulator::new(SimulatorConfig {
        bad_ratio: 0.1,
        late_ratio: 0.1,
        ..seeded(12)
    });
    let (mut poison, mut late) = (0, 0);
    for n in 0..10_000 {
        let now = start() + Duration::milliseconds(n);
        match simulator.next(now) {
            Generated::Poison { .. } => poison += 1,
            Generated::Event(e) if e.timestamp < now => late += 1,
            Generated::Event(_) => {}
        }
    }
    let stats = simulator.stats();
    assert_eq!((stats.poison, stats.late), (poison, late));
    assert_eq!(stats.events + stats.poison, 10_000);
    assert!(stats.sessions > 1_000, "{stats:?}");
}

#[test]
#[should_panic(expected = "must not exceed 1")]
fn ratios_above_one_in_total_are_refused() {
    Simulator::new(SimulatorConfig {
        bad_ratio: 0.6,
        late_ratio: 0.6,
        ..Default::default()
    });
}
