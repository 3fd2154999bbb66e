//! The reason kinds a message is dead-lettered with: one vocabulary for every worker.
//!
//! A dead-lettered copy carries its kind in `fleet.error.kind` ([`crate::dlq::names::KIND`]);
//! operators filter, summarise and redrive on it (`fleetctl dlq summary`, `--reason`), so a kind
//! means the same thing whichever worker wrote it, and the worker and the message say the rest.
//! Workers and tests name kinds through these constants, never as literals;
//! `docs/operations.md` lists every one (a test checks it).
//!
//! Besides these, a worker dead-letters with an AWS error code as the kind when AWS refuses for
//! good (`AccessDeniedException`, `ResourceNotFoundException`: see [`crate::aws_error`]).
//! Retry reasons (`Outcome::retry` kinds such as `lease-lost`) are labels on the retry metric
//! and the log, not dead-letter kinds: a message that runs out of retries is
//! [`RETRIES_EXHAUSTED`].

/// A transient failure (a dependency down, throttled, results not ready) outlasted the
/// message's receives, or a dependency outage outlasted `FLEET_OUTAGE_MAX_SECS`. The engine's.
/// Safe to redrive once the cause is fixed.
pub const RETRIES_EXHAUSTED: &str = "retries-exhausted";
/// The dead-letter queue could not be written, so the message was left to SQS's redrive
/// policy. The engine's. Safe to redrive.
pub const DLQ_UNAVAILABLE: &str = "dlq-unavailable";
/// FIFO: parked behind its group's dead-lettered head, so the group keeps its order. The
/// engine's. Safe to redrive (after the head).
pub const GROUP_BLOCKED: &str = "group-blocked";
/// What the message waits for did not come before its deadline (auction results). Safe to
/// redrive once the dependency answers.
pub const DEADLINE_EXCEEDED: &str = "deadline-exceeded";

/// The body is not JSON. Refused: it fails again the same way.
pub const INVALID_JSON: &str = "invalid-json";
/// The body is JSON but not a message this worker accepts: a field missing, of the wrong type
/// or out of range. Refused.
pub const INVALID_MESSAGE: &str = "invalid-message";
/// A message attribute the worker needs (the owner, the idempotency key) is missing. Refused.
pub const MISSING_ATTRIBUTE: &str = "missing-attribute";
/// The message's id or idempotency key is stored already with another payload. Refused.
pub const CONFLICT: &str = "conflict";
/// A fan-out was begun from results that have changed since; an operator decides. Refused.
pub const RESULTS_CHANGED: &str = "results-changed";
/// A dependency answered, with something the worker cannot use. Refused: fix the dependency,
/// then `--force`.
pub const INVALID_RESPONSE: &str = "invalid-response";

/// Every kind above, for documentation checks.
pub const ALL: [&str; 10] = [
    RETRIES_EXHAUSTED,
    DLQ_UNAVAILABLE,
    GROUP_BLOCKED,
    DEADLINE_EXCEEDED,
    INVALID_JSON,
    INVALID_MESSAGE,
    MISSING_ATTRIBUTE,
    CONFLICT,
    RESULTS_CHANGED,
    INVALID_RESPONSE,
];

/// Kinds that no redrive can fix: the message itself is wrong, or it conflicts with what is
/// stored. [`crate::dlq::redrive_is_safe`] also refuses [`LEGACY`] and any kind named by
/// the `invalid-`/`malformed-`/`missing-` convention.
pub const REDRIVE_REFUSED: [&str; 6] = [
    INVALID_JSON,
    INVALID_MESSAGE,
    MISSING_ATTRIBUTE,
    CONFLICT,
    RESULTS_CHANGED,
    INVALID_RESPONSE,
];

/// Kinds written by earlier releases that may still sit in a DLQ, with the kind that replaced
/// each: still refused by a redrive.
pub const LEGACY: [(&str, &str); 10] = [
    ("idempotency-conflict", CONFLICT),
    ("invalid-payment", INVALID_MESSAGE),
    ("invalid-orders", INVALID_MESSAGE),
    ("invalid-post", INVALID_MESSAGE),
    ("invalid-request", INVALID_MESSAGE),
    ("invalid-result", INVALID_MESSAGE),
    ("invalid-cycle", INVALID_MESSAGE),
    ("invalid-body", INVALID_MESSAGE),
    ("invalid-archive-message", INVALID_MESSAGE),
    ("malformed-command", INVALID_MESSAGE),
];

/// The kind for a body serde refused: [`INVALID_JSON`] when it is not JSON at all (a syntax
/// error, or it ends early), else [`INVALID_MESSAGE`] (JSON of the wrong shape).
pub fn of_json_error(err: &serde_json::Error) -> &'static str {
    if err.is_syntax() || err.is_eof() {
        INVALID_JSON
    } else {
        INVALID_MESSAGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_json_is_told_from_json_of_the_wrong_shape() {
        let err = |body: &str| serde_json::from_str::<Vec<u8>>(body).unwrap_err();
        assert_eq!(of_json_error(&err("not json")), INVALID_JSON);
        assert_eq!(of_json_error(&err("[1,")), INVALID_JSON);
        assert_eq!(of_json_error(&err(r#"{"a":1}"#)), INVALID_MESSAGE);
        assert_eq!(of_json_error(&err("[300]")), INVALID_MESSAGE);
    }

    #[test]
    fn the_runbook_lists_every_kind_and_every_former_one() {
        let runbook = include_str!("../../docs/operations.md");
        for kind in ALL.iter().chain(LEGACY.iter().map(|(old, _)| old)) {
            assert!(
                runbook.contains(&format!("`{kind}`")),
                "docs/operations.md does not list `{kind}`"
            );
        }
    }

    #[test]
    fn every_refused_kind_is_a_kind_and_no_former_name_is_reused() {
        for kind in REDRIVE_REFUSED {
            assert!(ALL.contains(&kind), "{kind}");
        }
        for (old, new) in LEGACY {
            assert!(!ALL.contains(&old), "{old} is a current kind");
            assert!(ALL.contains(&new), "{new}");
        }
    }
}
