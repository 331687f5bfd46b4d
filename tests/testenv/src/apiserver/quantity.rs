//! Kubernetes resource quantities (`500m`, `1Gi`, `2`), read and written as the API server does.

/// A quantity in thousandths of its unit, so that `500m` CPU and `1Gi` bytes are both exact.
pub(crate) type Milli = i128;

/// Parses a quantity such as `250m`, `0.5`, `128Mi`, `1G` or `1e3`; `None` when it is not one.
pub(crate) fn parse(text: &str) -> Option<Milli> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    // Thousandths per unit of the suffix, as a multiplier and a divisor.
    let (multiplier, divisor): (i128, i128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "T" => (1_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "u" => (1, 1000),
        "n" => (1, 1_000_000),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: u32 = exponent[1..].parse().ok()?;
            (1000 * 10_i128.checked_pow(power)?, 1)
        }
        _ => return None,
    };
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scaled: i128 = digits.parse().ok()?;
    let scale = 10_i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    // Rounded up, as the API server rounds quantities finer than it keeps.
    let value = (scaled.checked_mul(multiplier)? + scale * divisor - 1) / (scale * divisor);
    Some(if negative { -value } else { value })
}

/// A quantity in its canonical form: `500m`, `2`, `1Gi`, `1500M`.
pub(crate) fn format(value: Milli) -> String {
    if value % 1000 != 0 {
        return format!("{value}m");
    }
    let units = value / 1000;
    if units == 0 {
        return "0".to_owned();
    }
    for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if units % (1 << shift) == 0 {
            return format!("{}{suffix}", units >> shift);
        }
    }
    for (size, suffix) in [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1000, "k"),
    ] {
        if units % size == 0 {
            return format!("{}{suffix}", units / size);
        }
    }
    units.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_the_common_forms() {
        assert_eq!(parse("500m"), Some(500));
        assert_eq!(parse("0.5"), Some(500));
        assert_eq!(parse("2"), Some(2000));
        assert_eq!(parse("1Gi"), Some(1000 << 30));
        assert_eq!(parse("1e3"), Some(1_000_000));
        assert_eq!(parse("1x"), None);
        assert_eq!(parse(""), None);
        assert_eq!(format(500), "500m");
        assert_eq!(format(2000), "2");
        assert_eq!(format(1000 << 30), "1Gi");
        assert_eq!(format(256 * (1000 << 20)), "256Mi");
        assert_eq!(format(1_500_000_000_000), "1500M");
        assert_eq!(format(0), "0");
    }
}
