//! Single-threaded simulator throughput (run by `bench/producer.sh` in release): events per
//! second for `Simulator::next` alone and with the JSON payload, seed 42 and a fixed clock
//! advancing 10 ms per event, as the sink's tests use it. Prints one JSON line.

use std::hint::black_box;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use clickstream_producer::simulator::{Simulator, SimulatorConfig};

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let start_clock = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("a valid date");
    let measure = |with_payload: bool| {
        let mut simulator = Simulator::new(SimulatorConfig {
            seed: 42,
            ..Default::default()
        });
        let started = Instant::now();
        let mut bytes = 0_usize;
        for n in 0..events {
            let now = start_clock + chrono::Duration::milliseconds(10 * n as i64);
            let message = simulator.next(now);
            if with_payload {
                bytes += message.payload().len();
            }
            black_box(&message);
        }
        let seconds = started.elapsed().as_secs_f64();
        (events as f64 / seconds, bytes as f64 / events as f64)
    };
    let (next_per_s, _) = measure(false);
    let (json_per_s, mean_bytes) = measure(true);
    println!(
        "{{\"events\":{events},\"next_events_per_s\":{next_per_s:.0},\
         \"next_and_json_events_per_s\":{json_per_s:.0},\"mean_payload_bytes\":{mean_bytes:.0}}}"
    );
}
