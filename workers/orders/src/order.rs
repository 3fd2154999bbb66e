//! An order batch as the gateway queues it (the client's JSON array, byte for byte), parsed
//! with its numbers kept exact.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Most significant digits DynamoDB keeps in a number.
const MAX_DIGITS: usize = 38;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord<'a> {
    record_id: String,
    parameter_1: String,
    #[serde(borrow)]
    parameter_2: &'a RawValue,
}

/// One order record, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The key (and idempotency key) of the record.
    pub record_id: String,
    /// Free text.
    pub parameter_1: String,
    /// The number as a plain decimal string with its exact value (`2.1`, `0.0000001`).
    pub parameter_2: String,
}

impl Order {
    /// SHA-256 of what the record says (tells a redelivery from a conflicting reuse of its id).
    pub fn payload_hash(&self) -> String {
        let text = format!("{}\0{}", self.parameter_1, self.parameter_2);
        fleet::util::sha256_hex(text.as_bytes())
    }
}

/// Parses the batch: 1..=100 records, each number exact.
///
/// # Errors
/// A message that is not such a batch (permanent: retrying cannot fix it).
pub fn parse_batch(body: &str) -> Result<Vec<Order>, String> {
    let records: Vec<RawRecord<'_>> =
        serde_json::from_str(body).map_err(|e| format!("not an order batch: {e}"))?;
    if records.is_empty() || records.len() > 100 {
        return Err(format!("{} records: a batch has 1 to 100", records.len()));
    }
    records
        .into_iter()
        .map(|r| {
            let parameter_2 = exact_decimal(r.parameter_2.get()).ok_or_else(|| {
                format!(
                    "record {}: parameter_2 {} is not a number DynamoDB can hold exactly",
                    r.record_id,
                    r.parameter_2.get()
                )
            })?;
            Ok(Order {
                record_id: r.record_id,
                parameter_1: r.parameter_1,
                parameter_2,
            })
        })
        .collect()
}

/// A JSON number's text as a plain decimal string of the same value (no exponent, no
/// superfluous zeros), or `None` when it is not a number or has more than 38 significant
/// digits or a magnitude DynamoDB cannot store.
pub fn exact_decimal(text: &str) -> Option<String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (mantissa.contains('.') && frac.is_empty())
    {
        return None;
    }
    // value = digits × 10^point, digits without leading zeros.
    let all = format!("{int}{frac}");
    let point = exponent - frac.len() as i64;
    let digits = all.trim_start_matches('0');
    if digits.is_empty() {
        return Some("0".to_owned());
    }
    let trailing = digits.len() - digits.trim_end_matches('0').len();
    let (digits, point) = (&digits[..digits.len() - trailing], point + trailing as i64);
    // DynamoDB: up to 38 significant digits, magnitude within 1e-130 .. 1e126.
    let magnitude = digits.len() as i64 + point; // number of integer digits
    if digits.len() > MAX_DIGITS || !(-129..=126).contains(&magnitude) {
        return None;
    }
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if point >= 0 {
        out.push_str(digits);
        out.push_str(&"0".repeat(point as usize));
    } else if magnitude > 0 {
        let (a, b) = digits.split_at(magnitude as usize);
        out.push_str(a);
        out.push('.');
        out.push_str(b);
    } else {
        out.push_str("0.");
        out.push_str(&"0".repeat((-magnitude) as usize));
        out.push_str(digits);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_exact_value() {
        for (text, exact) in [
            ("2.1", "2.1"),
            ("1e-7", "0.0000001"),
            ("1E-7", "0.0000001"),
            ("-0.50", "-0.5"),
            ("12.5e2", "1250"),
            ("007", "7"),
            ("0.0", "0"),
            ("1.25E+3", "1250"),
            ("123.456e-2", "1.23456"),
        ] {
            assert_eq!(exact_decimal(text).as_deref(), Some(exact), "{text}");
        }
        for bad in ["1.", ".5", "abc", "\"1\"", "1e", "1e-200", &"9".repeat(39)] {
            assert_eq!(exact_decimal(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_batch_parses_and_refuses_what_the_gateway_would() {
        let orders = parse_batch(r#"[{"record_id":"r1","parameter_1":"a","parameter_2":2.1},{"record_id":"r2","parameter_1":"b","parameter_2":1e-7}]"#).unwrap();
        assert_eq!(orders[1].parameter_2, "0.0000001");
        assert!(parse_batch("[]").is_err());
        assert!(
            parse_batch(r#"[{"record_id":"r1","parameter_1":"a","parameter_2":"2"}]"#).is_err()
        );
        assert!(
            parse_batch(r#"[{"record_id":"r1","parameter_1":"a","parameter_2":2,"x":1}]"#).is_err()
        );
        assert!(parse_batch(r#"{"record_id":"r1"}"#).is_err());
    }

    #[test]
    fn the_hash_tells_a_redelivery_from_a_conflict() {
        let a = parse_batch(r#"[{"record_id":"r","parameter_1":"a","parameter_2":2.10}]"#).unwrap();
        let b = parse_batch(r#"[{"record_id":"r","parameter_1":"a","parameter_2":2.1}]"#).unwrap();
        let c = parse_batch(r#"[{"record_id":"r","parameter_1":"a","parameter_2":2.2}]"#).unwrap();
        assert_eq!(a[0].payload_hash(), b[0].payload_hash());
        assert_ne!(a[0].payload_hash(), c[0].payload_hash());
    }
}
