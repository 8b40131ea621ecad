//! Pure arithmetic on the recorded samples: rates from cumulative counts, axis ticks, labels.

/// The cumulative `(seconds, rows)` curve at `t`, linearly interpolated between its samples
/// (flat before the first and after the last).
pub fn rows_at(progress: &[(f64, f64)], t: f64) -> f64 {
    match progress.iter().position(|&(s, _)| s >= t) {
        None => progress.last().map_or(0.0, |p| p.1),
        Some(0) => progress[0].1,
        Some(i) => {
            let ((t0, r0), (t1, r1)) = (progress[i - 1], progress[i]);
            if t1 > t0 {
                r0 + (r1 - r0) * (t - t0) / (t1 - t0)
            } else {
                r1
            }
        }
    }
}

/// The window a rate is averaged over: 2 s, or two sample gaps (the median one) where the
/// samples are sparser than that. Rows become queryable one INSERT at a time (tens of thousands
/// of rows every half second or so per sink), so a narrower window shows the inserts, not the
/// rate.
pub fn window_s(progress: &[(f64, f64)]) -> f64 {
    let mut gaps: Vec<f64> = progress.windows(2).map(|w| w[1].0 - w[0].0).collect();
    if gaps.is_empty() {
        return 2.0;
    }
    gaps.sort_by(f64::total_cmp);
    (2.0 * gaps[gaps.len() / 2]).max(2.0)
}

/// Rows per second over time: at points a quarter window apart up to the last sample, the rows
/// added over the `window_s` before each (what a `rate()` over that window shows). Nothing was
/// queryable before the first sample (the sinks' start), so the first windows count from there.
pub fn rate(progress: &[(f64, f64)], window_s: f64) -> Vec<(f64, f64)> {
    let (Some(&(first, _)), Some(&(last, _))) = (progress.first(), progress.last()) else {
        return Vec::new();
    };
    let step = window_s / 4.0;
    let mut times: Vec<f64> = (1..)
        .map(|i| first + f64::from(i) * step)
        .take_while(|t| *t < last - step / 2.0)
        .collect();
    times.push(last);
    times
        .into_iter()
        .map(|t| {
            let rows = rows_at(progress, t) - rows_at(progress, (t - window_s).max(first));
            (t, rows / window_s)
        })
        .collect()
}

/// One `(seconds, value)` series per column after the first of `[seconds, v0, v1, ...]` rows.
pub fn columns(rows: &[Vec<f64>]) -> Vec<Vec<(f64, f64)>> {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    (1..width)
        .map(|c| {
            rows.iter()
                .filter_map(|r| Some((*r.first()?, *r.get(c)?)))
                .collect()
        })
        .collect()
}

/// About `target` round tick values (steps of 1, 2, 2.5 or 5 × 10^k) from `min` to at least `max`.
pub fn ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    let span = (max - min).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let start = (min / step).ceil() as i64;
    let end = (max / step).ceil() as i64;
    (start..=end).map(|i| i as f64 * step).collect()
}

/// A short number for an axis: 950, 1.5k, 250k, 2M.
pub fn si(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    format!("{}{suffix}", trim(scaled, 1))
}

/// `value` with at most `decimals` decimals, trailing zeros dropped: 2.50 → "2.5", 3.0 → "3".
pub fn trim(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// `value` with thousands separators: 10000000 → "10,000,000".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_at_interpolates_and_clamps() {
        let p = [(1.0, 0.0), (2.0, 100.0), (4.0, 100.0)];
        assert_eq!(rows_at(&p, 0.0), 0.0);
        assert_eq!(rows_at(&p, 1.5), 50.0);
        assert_eq!(rows_at(&p, 3.0), 100.0);
        assert_eq!(rows_at(&p, 9.0), 100.0);
        assert_eq!(rows_at(&[], 1.0), 0.0);
    }

    #[test]
    fn a_steady_stream_has_a_flat_rate_once_the_window_is_full() {
        let p: Vec<_> = (0..=40)
            .map(|i| (i as f64 * 0.25, i as f64 * 250.0))
            .collect();
        let r = rate(&p, 1.0);
        assert_eq!(r.first().map(|x| x.0), Some(0.25));
        assert_eq!(r.last(), Some(&(10.0, 1000.0)));
        assert!(
            r.iter()
                .filter(|(t, _)| *t >= 1.0)
                .all(|&(_, v)| (v - 1000.0).abs() < 1e-6),
            "{r:?}"
        );
        // Before that, counted from the start.
        assert!((r[0].1 - 250.0).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn the_join_shows_as_zero_then_the_rate_up_to_the_last_insert() {
        // 3 s of group join, then 100,000 rows/s in inserts every half second.
        let mut p = vec![(0.0, 0.0), (3.0, 0.0)];
        p.extend((1..=10).map(|i| (3.0 + i as f64 * 0.5, i as f64 * 50_000.0)));
        let r = rate(&p, 1.0);
        assert!(
            r.iter().filter(|(t, _)| *t <= 3.0).all(|(_, v)| *v == 0.0),
            "{r:?}"
        );
        let steady: Vec<_> = r.iter().filter(|(t, _)| *t >= 4.0).collect();
        assert!(
            steady.iter().all(|(_, v)| (v - 100_000.0).abs() < 1.0),
            "{steady:?}"
        );
        assert_eq!(r.last().map(|x| x.0), Some(8.0));
    }

    #[test]
    fn sparse_samples_widen_the_window() {
        let p: Vec<_> = (0..10).map(|i| (i as f64 * 2.0, 0.0)).collect();
        assert_eq!(window_s(&p), 4.0);
        assert_eq!(window_s(&[(0.0, 0.0), (0.3, 1.0)]), 2.0);
        assert_eq!(window_s(&[]), 2.0);
    }

    #[test]
    fn columns_split_per_sink() {
        let rows = vec![vec![0.0, 10.0, 20.0], vec![1.0, 11.0, 21.0]];
        assert_eq!(
            columns(&rows),
            vec![
                vec![(0.0, 10.0), (1.0, 11.0)],
                vec![(0.0, 20.0), (1.0, 21.0)]
            ]
        );
        assert!(columns(&[]).is_empty());
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 25.3, 5), vec![0.0, 10.0, 20.0, 30.0]);
        assert_eq!(
            ticks(0.0, 2_000_000.0, 4),
            vec![0.0, 500_000.0, 1e6, 1.5e6, 2e6]
        );
        assert_eq!(ticks(0.0, 4.4, 5), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn labels() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(250_000.0), "250k");
        assert_eq!(si(2e6), "2M");
        assert_eq!(trim(2.50, 2), "2.5");
        assert_eq!(trim(3.0, 1), "3");
        assert_eq!(trim(120.0, 0), "120");
        assert_eq!(thousands(10_000_000.0), "10,000,000");
        assert_eq!(thousands(999.0), "999");
    }
}
