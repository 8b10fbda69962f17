//! Sample events, Scuba-shaped: a service, an endpoint, a status, a latency,
//! tags, some NULLs, and a time in both formats. Deterministic per seed, so
//! tests and benchmarks see the same data as their oracles.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERVICES: [&str; 6] = ["api", "web", "db", "cache", "auth", "search"];
const ENDPOINTS: [&str; 5] = ["/home", "/login", "/search", "/cart", "/pay"];
const REGIONS: [&str; 4] = ["us-east", "us-west", "eu", "ap"];
const TAGS: [&str; 5] = ["canary", "mobile", "beta", "ipv6", "retry"];

/// Writes `rows` JSON lines starting at unix second `start_s`, one event
/// every ~`step_ms` milliseconds. Each row has a unique `id`.
pub fn write_events(
    out: &mut impl Write,
    rows: u64,
    seed: u64,
    start_s: i64,
) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut line = String::with_capacity(256);
    for id in 0..rows {
        line.clear();
        let t_ms = start_s * 1000 + (id as i64) * 37;
        let service = SERVICES[rng.random_range(0..SERVICES.len())];
        let status = match rng.random_range(0..100) {
            0..=84 => 200,
            85..=91 => 404,
            92..=96 => 500,
            _ => 503,
        };
        let latency = rng.random_range(1.0f64..50.0) * if status >= 500 { 8.0 } else { 1.0 };
        line.push_str(&format!("{{\"id\":{id},"));
        // Both time formats: unix seconds (some fractional) and RFC 3339.
        if id % 3 == 0 {
            let secs = t_ms.div_euclid(1000);
            let ms = t_ms.rem_euclid(1000);
            let dt = chrono_like_rfc3339(secs, ms);
            line.push_str(&format!("\"time\":\"{dt}\","));
        } else if id % 3 == 1 {
            line.push_str(&format!("\"time\":{},", t_ms / 1000));
        } else {
            line.push_str(&format!("\"time\":{:.3},", t_ms as f64 / 1000.0));
        }
        line.push_str(&format!("\"service\":\"{service}\","));
        if rng.random_range(0..10) != 0 {
            line.push_str(&format!(
                "\"endpoint\":\"{}\",",
                ENDPOINTS[rng.random_range(0..ENDPOINTS.len())]
            ));
        }
        line.push_str(&format!("\"status\":{status},"));
        line.push_str(&format!("\"latency_ms\":{latency:.3},"));
        line.push_str(&format!("\"bytes\":{},", rng.random_range(100..100_000)));
        if rng.random_range(0..20) == 0 {
            line.push_str("\"region\":null,");
        } else {
            line.push_str(&format!(
                "\"region\":\"{}\",",
                REGIONS[rng.random_range(0..REGIONS.len())]
            ));
        }
        let ntags = rng.random_range(0..3);
        let tags: Vec<String> = (0..ntags)
            .map(|_| format!("\"{}\"", TAGS[rng.random_range(0..TAGS.len())]))
            .collect();
        line.push_str(&format!("\"tags\":[{}],", tags.join(",")));
        line.push_str(&format!("\"user_id\":\"u{}\",", rng.random_range(0..5000)));
        line.push_str(&format!("\"ok\":{}", status < 400));
        line.push_str("}\n");
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// RFC 3339 UTC with milliseconds, without pulling a date library in here.
fn chrono_like_rfc3339(secs: i64, ms: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates_are_right() {
        assert_eq!(chrono_like_rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            chrono_like_rfc3339(1_700_000_000, 5),
            "2023-11-14T22:13:20.005Z"
        );
    }
}
