//! Prints simulated messages as JSON lines, without Kafka: what the producer would send.
//!
//! Usage: cargo run -p clickstream-producer --example sample -- [COUNT] [SEED] [BAD_RATIO]

use clickstream_producer::simulator::{Generated, Simulator, SimulatorConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(42);
    let bad_ratio: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.0);
    let mut simulator = Simulator::new(SimulatorConfig {
        seed,
        bad_ratio,
        ..Default::default()
    });
    let mut now = chrono::Utc::now();
    for _ in 0..count {
        now += chrono::Duration::milliseconds(10);
        match simulator.next(now) {
            Generated::Event(event) => println!("{}", String::from_utf8_lossy(&event.to_json())),
            Generated::Poison { kind, key, payload } => println!(
                "# poison {} (key {key}, {} bytes): {}",
                kind.as_str(),
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(160)])
            ),
        }
    }
}
