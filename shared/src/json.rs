//! Reading a client's JSON body the way the gateway read it.
//!
//! API Gateway validates a body against the route's JSON schema and queues it byte for byte;
//! the worker parses it again. Whatever the validator let through, the worker must read the
//! same way (docs/api.md, "What the gateway accepts, the worker keeps"):
//!
//! - **Duplicate keys**: both validators (API Gateway's, and the Python one LocalStack runs)
//!   read `{"a": 1, "a": 2}` as `{"a": 2}`: the last one wins. [`from_body`] does the same,
//!   where serde's derived structs would refuse the body.
//! - **Numbers**: a JSON number is a decimal, written however the client likes (`100`,
//!   `1e2`, `100.0`, `0.1e3`). [`Decimal`] keeps its exact value, never going through a
//!   float, and says whether DynamoDB can hold it as a number (at most 38 significant digits,
//!   magnitude from 1e-130 to below 1e126); [`Decimal::attribute`] chooses the attribute.

use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::fmt;

/// Most significant digits a DynamoDB number keeps.
pub const DYNAMODB_MAX_DIGITS: usize = 38;

/// Deserializes a client's body; duplicate object keys (at any depth) are read as the gateway
/// read them: the last one wins. Numbers and strings reach `T` as written.
///
/// A value that a later duplicate replaces is never validated by the gateway, so it may hold
/// what the gateway refuses elsewhere, such as a lone UTF-16 surrogate (`"\ud800"`), which
/// serde refuses in a value it reads: the rewrite skips replaced values unread.
///
/// # Errors
/// The body is not JSON of `T`'s shape.
pub fn from_body<T: DeserializeOwned>(body: &str) -> Result<T, serde_json::Error> {
    // The common case costs one parse; only a body serde refused is rewritten.
    let error = match serde_json::from_str(body) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    match last_key_wins(body) {
        Ok(rewritten) if rewritten != body => serde_json::from_str(&rewritten).map_err(|_| error),
        _ => Err(error),
    }
}

/// `body` with every object's duplicate keys dropped but the last (which keeps the place of
/// the first). Values are kept byte for byte.
///
/// # Errors
/// `body` is not JSON.
pub fn last_key_wins(body: &str) -> Result<String, serde_json::Error> {
    let raw: &RawValue = serde_json::from_str(body)?;
    let mut out = String::with_capacity(body.len());
    rewrite(raw, &mut out)?;
    Ok(out)
}

fn rewrite(raw: &RawValue, out: &mut String) -> Result<(), serde_json::Error> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let Members(members) = serde_json::from_str(text)?;
            let mut kept: Vec<(String, &RawValue)> = Vec::with_capacity(members.len());
            for (key, value) in members {
                match kept.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = value,
                    None => kept.push((key, value)),
                }
            }
            out.push('{');
            for (i, (key, value)) in kept.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&key)?);
                out.push(':');
                rewrite(value, out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let Elements(elements) = serde_json::from_str(text)?;
            out.push('[');
            for (i, element) in elements.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                rewrite(element, out)?;
            }
            out.push(']');
        }
        _ => out.push_str(text),
    }
    Ok(())
}

/// An object's members in order, duplicates included.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

/// An array's elements, unparsed.
struct Elements<'a>(Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Elements<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Elements<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut elements = Vec::new();
                while let Some(element) = seq.next_element::<&'de RawValue>()? {
                    elements.push(element);
                }
                Ok(Elements(elements))
            }
        }
        deserializer.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// A JSON number's exact value: `digits × 10^exponent`, `digits` without leading or trailing
/// zeros (empty for zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    digits: String,
    exponent: i128,
}

impl Decimal {
    /// Parses a JSON number's text (`-12.50e+3`); `None` for anything else (a string, `1.`,
    /// `.5`, an exponent of more than 36 digits, which no one writes but a validator reading
    /// doubles lets through as infinity).
    pub fn parse(text: &str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e = &rest[i + 1..];
                let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let value: i128 = e.parse().ok().filter(|v: &i128| v.abs() < 10i128.pow(36))?;
                (&rest[..i], value)
            }
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
        let all = format!("{int}{frac}");
        let digits = all.trim_start_matches('0');
        let significant = digits.trim_end_matches('0');
        let exponent = exponent - frac.len() as i128 + (digits.len() - significant.len()) as i128;
        Some(Self {
            negative: negative && !significant.is_empty(),
            digits: significant.to_owned(),
            exponent: if significant.is_empty() { 0 } else { exponent },
        })
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// Whether the value is greater than zero.
    pub fn is_positive(&self) -> bool {
        !self.negative && !self.is_zero()
    }

    /// The value as the nearest `f64` (what a validator working in doubles compares).
    pub fn to_f64(&self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    /// The value as an integer, when it is one that fits.
    pub fn to_i64(&self) -> Option<i64> {
        if self.is_zero() {
            return Some(0);
        }
        if self.exponent < 0 || self.digits.len() as i128 + self.exponent > 18 {
            return None;
        }
        let magnitude: i64 = format!("{}{}", self.digits, "0".repeat(self.exponent as usize))
            .parse()
            .ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }

    /// Whether a DynamoDB number holds this value exactly: at most 38 significant digits and
    /// a magnitude from 1e-130 to below 1e126 (or zero).
    pub fn fits_dynamodb(&self) -> bool {
        if self.is_zero() {
            return true;
        }
        // The value is 0.d1d2… × 10^magnitude.
        let magnitude = self.digits.len() as i128 + self.exponent;
        self.digits.len() <= DYNAMODB_MAX_DIGITS && (-129..=126).contains(&magnitude)
    }

    /// The attribute to store: a number when DynamoDB holds it exactly, else a string with
    /// the same exact decimal (the read templates render either as a JSON number).
    pub fn attribute(&self) -> NumberAttribute {
        if self.fits_dynamodb() {
            NumberAttribute::N(self.to_string())
        } else {
            NumberAttribute::S(self.to_string())
        }
    }
}

/// How a [`Decimal`] is stored: DynamoDB's `N`, or `S` for a value `N` cannot hold exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberAttribute {
    /// A DynamoDB number.
    N(String),
    /// The exact decimal as a string.
    S(String),
}

impl fmt::Display for Decimal {
    /// Plain decimal (`1250`, `0.0001`, `-2.5`) for every value a DynamoDB number holds (the
    /// spelling payload hashes were computed over before this type existed: it must not
    /// change) and for any within 40 places of the point, scientific (`1.5e200`) for the
    /// rest: always valid JSON, always the exact value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        if self.negative {
            f.write_str("-")?;
        }
        let digits = &self.digits;
        // The value is 0.d1d2… × 10^magnitude; within DynamoDB's range it fits an i64.
        let magnitude = digits.len() as i128 + self.exponent;
        if !self.fits_dynamodb() && !(-40..=40).contains(&magnitude) {
            let (first, rest) = digits.split_at(1);
            let point = if rest.is_empty() { "" } else { "." };
            return write!(f, "{first}{point}{rest}e{}", magnitude - 1);
        }
        if self.exponent >= 0 {
            write!(f, "{digits}{}", "0".repeat(self.exponent as usize))
        } else if magnitude > 0 {
            let (a, b) = digits.split_at(magnitude as usize);
            write!(f, "{a}.{b}")
        } else {
            write!(f, "0.{}{digits}", "0".repeat((-magnitude) as usize))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn numbers_keep_their_exact_value() {
        for (text, exact) in [
            ("2.1", "2.1"),
            ("1e2", "100"),
            ("1E+2", "100"),
            ("0.1e3", "100"),
            ("100.000", "100"),
            ("1e-7", "0.0000001"),
            ("-0.50", "-0.5"),
            ("-0", "0"),
            ("0e400", "0"),
            ("12.5e2", "1250"),
            ("007", "7"),
            ("123.456e-2", "1.23456"),
            ("1e200", "1e200"),
            ("-1.5e-300", "-1.5e-300"),
        ] {
            let d = Decimal::parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(d.to_string(), exact, "{text}");
            // The text is valid JSON of the same value.
            assert_eq!(Decimal::parse(&d.to_string()), Some(d), "{text}");
        }
        // Spellings payload hashes were computed over before: plain for every storable value.
        let plain = |t: &str| Decimal::parse(t).unwrap().to_string();
        assert_eq!(plain("1e40"), format!("1{}", "0".repeat(40)));
        assert_eq!(plain("1e-41"), format!("0.{}1", "0".repeat(40)));
        assert_eq!(plain("1e1000000000000000"), "1e1000000000000000");
        let huge = format!("1e{}", "9".repeat(37));
        for bad in ["1.", ".5", "abc", "\"1\"", "1e", "1e+", "+1", &huge] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn dynamodb_holds_38_digits_within_its_range() {
        let fits = |t: &str| Decimal::parse(t).unwrap().fits_dynamodb();
        assert!(fits(&"9".repeat(38)));
        assert!(fits(&format!("{}{}", "9".repeat(38), "0".repeat(80))));
        assert!(fits("1e125") && fits("1e-130") && fits("0"));
        assert!(!fits(&"9".repeat(39)));
        assert!(!fits(&format!("1.{}1", "0".repeat(37))));
        assert!(!fits("1e126") && !fits("1e-131") && !fits("1e200"));
        assert_eq!(
            Decimal::parse("1e200").unwrap().attribute(),
            NumberAttribute::S("1e200".into())
        );
        assert_eq!(
            Decimal::parse("1e2").unwrap().attribute(),
            NumberAttribute::N("100".into())
        );
    }

    #[test]
    fn integers_and_comparisons() {
        assert_eq!(Decimal::parse("1.9e3").unwrap().to_i64(), Some(1900));
        assert_eq!(Decimal::parse("-2000.0").unwrap().to_i64(), Some(-2000));
        assert_eq!(Decimal::parse("2000.5").unwrap().to_i64(), None);
        assert_eq!(Decimal::parse("0.0").unwrap().to_i64(), Some(0));
        assert!(Decimal::parse("1e-400").unwrap().is_positive());
        assert_eq!(Decimal::parse("1e-400").unwrap().to_f64(), 0.0);
        assert!(!Decimal::parse("-0.0").unwrap().is_positive());
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        x: String,
        inner: Vec<Inner>,
    }

    #[test]
    fn duplicate_keys_read_as_the_gateway_reads_them() {
        let body = r#"{"x":"first","inner":[{"a":1,"a":2}],"x":"l\u0061st \"q\""}"#;
        assert!(serde_json::from_str::<Outer>(body).is_err());
        let outer: Outer = from_body(body).unwrap();
        assert_eq!(outer.x, "last \"q\"");
        assert_eq!(outer.inner, vec![Inner { a: 2 }]);
        // Keys compared as decoded text; numbers kept as written.
        assert_eq!(
            last_key_wins(r#" {"\u0061": 1.50, "a": 1e2, "b": [ ] } "#).unwrap(),
            r#"{"a":1e2,"b":[]}"#
        );
        assert!(from_body::<Outer>("{\"x\": ").is_err());
        // A replaced value is not validated by the gateway: a lone surrogate there is harmless.
        let replaced = r#"{"x":"bad \ud800","inner":[],"x":"ok \ud83d\ude00 \\ud800"}"#;
        assert_eq!(
            from_body::<Outer>(replaced).unwrap().x,
            "ok \u{1f600} \\ud800"
        );
        // Where it is kept, the body stays refused.
        assert!(from_body::<Outer>(r#"{"x":"bad \udfff","inner":[]}"#).is_err());
    }
}
