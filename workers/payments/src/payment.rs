//! The payment message: what the gateway enqueues, how it is checked, and its payload hash.
//!
//! The body is the client's JSON exactly as sent to `PUT /payments/{paymentId}`; the path id,
//! the caller's owner id and request metadata arrive as message attributes set by the API
//! Gateway mapping template.

use fleet::json::Decimal;
use fleet::kind;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The gateway attributes naming the caller (docs/security.md), defined by the engine.
pub use fleet::message::{ATTR_API_KEY_ID, ATTR_OWNER_ID};

/// Message attribute carrying the payment id from the request path.
pub const ATTR_PAYMENT_ID: &str = "paymentId";
/// Message attribute carrying API Gateway's request id.
pub use fleet::gateway::ATTR_REQUEST_ID;
/// The owner of a payment whose message names no caller (sent straight to the queue, not
/// through the gateway: tests, the benchmark, an operator). No API caller has this id (API
/// key ids are alphanumeric, Cognito subs are UUIDs), so no caller can read such a payment.
pub const NO_OWNER: &str = "-";
/// Message attribute carrying the gateway's receive time, ms since the epoch.
pub use fleet::gateway::ATTR_RECEIVED_AT;

/// Largest amount accepted (same bound as the gateway's JSON schema).
pub const MAX_AMOUNT: f64 = 1_000_000_000.0;
/// Longest id (payment id, user id) accepted.
pub const MAX_ID_LEN: usize = 64;
/// Longest free-text reference accepted.
pub const MAX_REFERENCE_LEN: usize = 256;

/// The body of `PUT /payments/{paymentId}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    user_id: String,
    amount: Box<RawValue>,
    currency: String,
    #[serde(default)]
    reference: Option<String>,
}

/// A checked payment, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Whose it is: the caller's owner id. With the payment id, the row's key.
    pub owner: String,
    /// From the request path: the idempotency key, unique per owner.
    pub payment_id: String,
    /// Who pays.
    pub user_id: String,
    /// The amount's exact value (never through a float): `1e2`, `100` and `100.0` are the
    /// same amount.
    pub amount: Decimal,
    /// ISO-4217-style code, e.g. `EUR`.
    pub currency: String,
    /// Free text from the client.
    pub reference: Option<String>,
}

/// Why a message is not a valid payment (always permanent: retrying cannot fix it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPayment {
    /// The body is not JSON of the payment's shape.
    #[error("body is not a valid payment: {0}")]
    Body(String),
    /// A field breaks a rule.
    #[error("{field}: {rule}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What rule it breaks.
        rule: &'static str,
    },
}

impl InvalidPayment {
    /// The stable kind recorded on the dead-lettered message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Body(_) => kind::INVALID_JSON,
            Self::Field { .. } => kind::INVALID_MESSAGE,
        }
    }
}

fn is_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Payment {
    /// [`Self::parse_owned`] for a payment of no caller ([`NO_OWNER`]).
    ///
    /// # Errors
    /// [`InvalidPayment`] naming the first rule broken.
    pub fn parse(payment_id: &str, body: &str) -> Result<Self, InvalidPayment> {
        Self::parse_owned(NO_OWNER, payment_id, body)
    }

    /// Parses and checks a body for `payment_id` of `owner` (the rules of the gateway's schema,
    /// checked again here because anything may be sent straight to the queue).
    ///
    /// # Errors
    /// [`InvalidPayment`] naming the first rule broken.
    pub fn parse_owned(owner: &str, payment_id: &str, body: &str) -> Result<Self, InvalidPayment> {
        let field = |field, rule| InvalidPayment::Field { field, rule };
        if owner.is_empty() || owner.contains('#') {
            return Err(field("ownerId", "a non-empty id without '#'"));
        }
        if !is_id(payment_id) {
            return Err(field("paymentId", "1-64 characters of A-Z a-z 0-9 - _"));
        }
        let body: Body =
            fleet::json::from_body(body).map_err(|e| InvalidPayment::Body(e.to_string()))?;
        if !is_id(&body.user_id) {
            return Err(field("userId", "1-64 characters of A-Z a-z 0-9 - _"));
        }
        let amount =
            Decimal::parse(body.amount.get()).ok_or_else(|| field("amount", "must be a number"))?;
        // The gateway's schema says "> 0, <= 1e9"; a validator comparing doubles lets
        // 1000000000.0000000001 through, one comparing decimals lets 1e-400 through: the
        // worker accepts what either accepts, and stores the exact value.
        if !amount.is_positive() || amount.to_f64() > MAX_AMOUNT {
            return Err(field("amount", "must be > 0 and <= 1000000000"));
        }
        if body.currency.len() != 3 || !body.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(field("currency", "three upper-case letters (ISO 4217)"));
        }
        if body
            .reference
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REFERENCE_LEN)
        {
            return Err(field("reference", "at most 256 characters"));
        }
        Ok(Self {
            owner: owner.to_owned(),
            payment_id: payment_id.to_owned(),
            user_id: body.user_id,
            amount,
            currency: body.currency,
            reference: body.reference,
        })
    }

    /// The row's partition key: `<owner>#<payment id>` (neither part contains `#`).
    pub fn key(&self) -> String {
        format!("{}#{}", self.owner, self.payment_id)
    }

    /// SHA-256 of the canonical payload (hex): equal for the same payment however its JSON
    /// was spaced, ordered or its amount written (`10.50` and `10.5`). The owner is not in
    /// it: it is in the key, so two payloads are only ever compared for the same owner.
    pub fn payload_hash(&self) -> String {
        // serde_json's map is ordered by key, so this serialisation is canonical.
        let canonical = serde_json::json!({
            "paymentId": self.payment_id,
            "userId": self.user_id,
            "amount": self.amount.to_string(),
            "currency": self.currency,
            "reference": self.reference,
        });
        fleet::util::sha256_hex(canonical.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str =
        r#"{"userId":"u-1","amount":10.50,"currency":"EUR","reference":"a&b=c+d%e \"q\" é"}"#;

    #[test]
    fn parses_a_valid_payment_exactly() {
        let p = Payment::parse("p-1", BODY).unwrap();
        assert_eq!(p.amount.to_string(), "10.5");
        assert_eq!(p.reference.as_deref(), Some("a&b=c+d%e \"q\" é"));
    }

    #[test]
    fn hash_ignores_spacing_order_and_amount_spelling() {
        let a = Payment::parse("p-1", BODY).unwrap();
        let b = Payment::parse(
            "p-1",
            r#"{ "currency": "EUR", "reference":"a&b=c+d%e \"q\" é", "amount": 10.5,"userId":"u-1" }"#,
        )
        .unwrap();
        assert_eq!(a.payload_hash(), b.payload_hash());
        assert_eq!(a.payload_hash().len(), 64);
    }

    #[test]
    fn hash_changes_with_any_field() {
        let base = Payment::parse("p-1", BODY).unwrap();
        let variants = [
            Payment::parse("p-2", BODY).unwrap(),
            Payment::parse("p-1", &BODY.replace("u-1", "u-2")).unwrap(),
            Payment::parse("p-1", &BODY.replace("10.50", "10.51")).unwrap(),
            Payment::parse("p-1", &BODY.replace("EUR", "USD")).unwrap(),
            Payment::parse("p-1", &BODY.replace("a&b", "a&c")).unwrap(),
            Payment::parse("p-1", r#"{"userId":"u-1","amount":10.50,"currency":"EUR"}"#).unwrap(),
        ];
        for v in variants {
            assert_ne!(base.payload_hash(), v.payload_hash(), "{v:?}");
        }
    }

    #[test]
    fn rejects_each_rule() {
        let cases = [
            ("p-1", "not json", kind::INVALID_JSON),
            (
                "p-1",
                r#"{"userId":"u","amount":1,"currency":"EUR","extra":1}"#,
                kind::INVALID_JSON,
            ),
            (
                "p-1",
                r#"{"amount":1,"currency":"EUR"}"#,
                kind::INVALID_JSON,
            ),
            (
                "p-1",
                r#"{"userId":"u","amount":"1","currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                "p-1",
                r#"{"userId":"u","amount":0,"currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                "p-1",
                r#"{"userId":"u","amount":-5,"currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                "p-1",
                r#"{"userId":"u","amount":1e10,"currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                "p-1",
                r#"{"userId":"u","amount":2000000000,"currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                "p-1",
                r#"{"userId":"u","amount":1,"currency":"eur"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                "p-1",
                r#"{"userId":"","amount":1,"currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
            (
                "bad id!",
                r#"{"userId":"u","amount":1,"currency":"EUR"}"#,
                kind::INVALID_MESSAGE,
            ),
        ];
        for (id, body, kind) in cases {
            let err = Payment::parse(id, body).expect_err(body);
            assert_eq!(err.kind(), kind, "{body}: {err}");
        }
        let long = format!(
            r#"{{"userId":"u","amount":1,"currency":"EUR","reference":"{}"}}"#,
            "x".repeat(257)
        );
        assert!(Payment::parse("p", &long).is_err());
    }

    #[test]
    fn the_key_is_scoped_to_the_owner() {
        let mine = Payment::parse_owned("key-a", "p-1", BODY).unwrap();
        let theirs = Payment::parse_owned("key-b", "p-1", BODY).unwrap();
        assert_eq!(mine.key(), "key-a#p-1");
        assert_ne!(mine.key(), theirs.key());
        assert_eq!(mine.payload_hash(), theirs.payload_hash(), "same payload");
        assert_eq!(Payment::parse("p-1", BODY).unwrap().key(), "-#p-1");
        for bad in ["", "a#b"] {
            let err = Payment::parse_owned(bad, "p-1", BODY).unwrap_err();
            assert_eq!(err.kind(), kind::INVALID_MESSAGE, "{bad:?}");
        }
    }

    #[test]
    fn amounts_are_exact_however_written() {
        let amount = |a: &str| {
            let body = format!(r#"{{"userId":"u","amount":{a},"currency":"EUR"}}"#);
            Payment::parse("p-1", &body).map(|p| p.amount.to_string())
        };
        assert_eq!(amount("1e2").unwrap(), "100");
        assert_eq!(amount("7.2500").unwrap(), "7.25");
        assert_eq!(amount("0.1E3").unwrap(), "100");
        // What a double-based validator lets through is stored exactly.
        assert_eq!(
            amount("1000000000.0000000001").unwrap(),
            "1000000000.0000000001"
        );
        assert_eq!(amount("1e-400").unwrap(), "1e-400");
        let long = format!("0.{}", "1".repeat(45));
        assert_eq!(amount(&long).unwrap(), long);
        assert!(amount("1.").is_err() && amount("\"1\"").is_err() && amount("-0").is_err());
    }

    #[test]
    fn duplicate_keys_last_wins_like_the_gateway() {
        let p = Payment::parse(
            "p-1",
            r#"{"userId":"a","amount":1,"currency":"EUR","userId":"b","amount":2}"#,
        )
        .unwrap();
        assert_eq!(
            (p.user_id.as_str(), p.amount.to_string()),
            ("b", "2".into())
        );
    }
}
