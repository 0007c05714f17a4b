//! Latency histograms as both `ferry status` and `ferry-agent status` keep them: bucket `i`
//! counts durations under `2^i` µs, the last one anything longer (`2^(BUCKETS-2)` µs is about
//! 17 s); their quantiles; and their Prometheus text.

use std::fmt::Write as _;

/// Number of buckets.
pub const BUCKETS: usize = 26;

/// The bucket of a duration of `micros` µs.
pub fn bucket_of(micros: u64) -> usize {
    (64 - micros.leading_zeros() as usize).min(BUCKETS - 1)
}

/// The upper bound, in µs, of the bucket holding quantile `q` of `buckets` (0 when empty).
pub fn quantile(buckets: &[u64], q: f64) -> u64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want {
            return 1u64 << i;
        }
    }
    1u64 << (buckets.len() - 1)
}

/// Writes the samples of one Prometheus histogram over `buckets`; `sum` in seconds, estimated
/// from the buckets' upper bounds when `None`.
pub fn prometheus(out: &mut String, name: &str, labels: &str, buckets: &[u64], sum: Option<f64>) {
    let mut cumulative = 0;
    let mut estimate = 0.0;
    for (i, n) in buckets.iter().enumerate() {
        cumulative += n;
        estimate += *n as f64 * (1u64 << i) as f64 / 1e6;
        if i + 1 < buckets.len() {
            let le = (1u64 << i) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}\n{name}_sum{{{labels}}} {}\n\
         {name}_count{{{labels}}} {cumulative}",
        sum.unwrap_or(estimate)
    );
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut b = vec![0u64; BUCKETS];
        assert_eq!(quantile(&b, 0.5), 0);
        b[3] = 98; // < 8 µs
        b[10] = 2; // < 1024 µs
        assert_eq!(quantile(&b, 0.5), 8);
        assert_eq!(quantile(&b, 0.98), 8);
        assert_eq!(quantile(&b, 0.99), 1024);
    }

    #[test]
    fn buckets_are_powers_of_two_and_the_last_takes_the_rest() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(7), 3);
        assert_eq!(bucket_of(8), 4);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }
}
