//! An order batch as the gateway queues it (the client's JSON array, byte for byte), parsed
//! with its numbers kept exact.

use fleet::json::Decimal;
use fleet::{kind, Reason};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    record_id: String,
    parameter_1: String,
    parameter_2: Box<RawValue>,
}

/// One order record, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The key (and idempotency key) of the record.
    pub record_id: String,
    /// Free text.
    pub parameter_1: String,
    /// The number's exact value (`2.1` stays 2.1; `1e2` is 100; 39 digits stay 39 digits).
    pub parameter_2: Decimal,
}

impl Order {
    /// SHA-256 of what the record says (tells a redelivery from a conflicting reuse of its id).
    pub fn payload_hash(&self) -> String {
        let text = format!("{}\0{}", self.parameter_1, self.parameter_2);
        fleet::util::sha256_hex(text.as_bytes())
    }
}

/// Parses the batch: 1..=100 records, each number exact, duplicate keys read as the gateway
/// reads them ([`fleet::json::from_body`]).
///
/// # Errors
/// A message that is not such a batch (permanent: retrying cannot fix it).
pub fn parse_batch(body: &str) -> Result<Vec<Order>, Reason> {
    let records: Vec<RawRecord> = fleet::json::from_body(body)
        .map_err(|e| Reason::new(kind::of_json_error(&e), format!("not an order batch: {e}")))?;
    if records.is_empty() || records.len() > 100 {
        return Err(Reason::new(
            kind::INVALID_MESSAGE,
            format!("{} records: a batch has 1 to 100", records.len()),
        ));
    }
    records
        .into_iter()
        .map(|r| {
            let parameter_2 = Decimal::parse(r.parameter_2.get()).ok_or_else(|| {
                Reason::new(
                    kind::INVALID_MESSAGE,
                    format!(
                        "record {}: parameter_2 {} is not a number",
                        r.record_id,
                        r.parameter_2.get()
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_the_gateway_accepts_are_kept_exactly() {
        let digits39 = format!("1.{}1", "0".repeat(37));
        let body = format!(
            r#"[{{"record_id":"r1","parameter_1":"a","parameter_2":1e200}},{{"record_id":"r2","parameter_1":"b","parameter_2":{digits39}}},{{"record_id":"r3","parameter_1":"c","parameter_2":1E2,"parameter_2":3}}]"#
        );
        let orders = parse_batch(&body).unwrap();
        let values: Vec<String> = orders.iter().map(|o| o.parameter_2.to_string()).collect();
        assert_eq!(values, ["1e200", digits39.as_str(), "3"]);
    }

    #[test]
    fn a_batch_parses_and_refuses_what_the_gateway_would() {
        let orders = parse_batch(r#"[{"record_id":"r1","parameter_1":"a","parameter_2":2.1},{"record_id":"r2","parameter_1":"b","parameter_2":1e-7}]"#).unwrap();
        assert_eq!(orders[1].parameter_2.to_string(), "0.0000001");
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
