//! Byte sizes: parsing what users type (`16M`) and printing what they read (`1.5 KiB`).

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses sizes like `16M`, `16MiB`, `1.5G`, `4096` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: expected a number with an optional unit (K, M, G, T)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "size {s:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    Ok((v * mult as f64) as u64)
}

/// Parses a transfer rate in bytes per second, as restic, rclone and kopia users write
/// it: `500K`, `10M`, `1.5G`, with an optional `iB`/`B` and `/s` (`10MiB/s`), in binary
/// units; `B` alone means bytes; a bare number means KiB/s (restic's `--limit-upload`).
/// `0` is returned as 0: no limit.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not a rate: give bytes per second as 500K, 10M or 1G (binary units, \
             optional iB and /s), or a bare number of KiB/s; 0 for no limit"
        )
    };
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t)
        .trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "k" | "kb" | "kib" => 1 << 10,
        "b" => 1,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 || (bytes > 0.0 && bytes < 1.0) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A period in the largest unit that divides it: 30d, 36h, 90m, 45s.
pub fn human_period(secs: u64) -> String {
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs >= n && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Durations like `30s`, `10m`, `2h` (a bare number means seconds).
pub fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split]
        .parse()
        .map_err(|_| format!("{s:?}: give a number with s, m or h, e.g. 10m"))?;
    let mult = match &t[split..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use s, m, h or d)")),
    };
    // Checked: a huge count would overflow (a panic in debug builds, a silently wrong
    // wait in release builds).
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("10MiB/s"), Ok(10 << 20));
        assert_eq!(parse_rate("10MB/s"), Ok(10 << 20));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert_eq!(parse_rate("1.5m"), Ok(3 << 19));
        assert_eq!(parse_rate("800"), Ok(800 << 10), "a bare number is KiB/s");
        assert_eq!(parse_rate("800/s"), Ok(800 << 10));
        assert_eq!(parse_rate("4096B"), Ok(4096));
        assert_eq!(parse_rate("0"), Ok(0), "no limit");
        for bad in ["10Q", "", "M", "-1M", "1e3", "fast", "10M/h", "0.1B"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn periods_in_their_largest_whole_unit() {
        assert_eq!(human_period(30 * 86400), "30d");
        assert_eq!(human_period(36 * 3600), "36h");
        assert_eq!(human_period(90 * 60), "90m");
        assert_eq!(human_period(61), "61s");
        assert_eq!(human_period(0), "0s");
    }

    #[test]
    fn lock_wait_parses_and_refuses_overflow() {
        assert_eq!(
            super::parse_wait("10m"),
            Ok(std::time::Duration::from_secs(600))
        );
        assert!(super::parse_wait("9999999999999999999h").is_err());
        assert_eq!(
            super::parse_wait("2d"),
            Ok(std::time::Duration::from_secs(2 * 86400))
        );
        assert!(super::parse_wait("5w").is_err());
    }
}
