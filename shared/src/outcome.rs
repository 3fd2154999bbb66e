//! What a handler says about one message, and why.
//!
//! The engine turns each [`Outcome`] into exactly one queue action: delete it, make it visible
//! again later, or move it to the dead-letter queue with its [`Reason`].

use std::borrow::Cow;
use std::fmt;

/// The result of handling one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The work is done: the message is deleted.
    Done,
    /// The work had already been done (a redelivery or a replay): the message is deleted and
    /// counted as a duplicate.
    Duplicate,
    /// A transient failure: the message becomes visible again after a backoff computed from
    /// its receive count. The queue's redrive policy ends it in the DLQ after too many tries.
    Retry(Reason),
    /// A failure that no retry can fix: the message goes to the DLQ at once, with the reason.
    Permanent(Reason),
}

impl Outcome {
    /// A transient failure of a dependency that did not answer (feeds the circuit breaker).
    pub fn unavailable(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::Retry(Reason::dependency(kind, message))
    }

    /// A transient failure of the given kind.
    pub fn retry(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::Retry(Reason::new(kind, message))
    }

    /// A permanent failure of the given kind.
    pub fn permanent(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::Permanent(Reason::new(kind, message))
    }

    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Duplicate => "duplicate",
            Self::Retry(_) => "retry",
            Self::Permanent(_) => "permanent",
        }
    }
}

/// Why a message failed: a stable machine-readable `kind` (for filters and alerts) and a
/// human-readable `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Stable identifier, e.g. `invalid-json`, `conflict`, `ThrottlingException`.
    pub kind: Cow<'static, str>,
    /// What happened, for a person reading the DLQ.
    pub message: String,
    /// A dependency (an AWS service, an HTTP peer) failed to answer: throttling, a timeout, a
    /// 5xx, a refused connection. Such failures feed the engine's circuit breaker; a business
    /// "not yet" (results not ready, a lease held elsewhere) does not.
    pub dependency: bool,
}

impl Reason {
    /// Builds a reason.
    pub fn new(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            dependency: false,
        }
    }

    /// A reason that blames a dependency that did not answer (see [`Self::dependency`]).
    pub fn dependency(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            dependency: true,
            ..Self::new(kind, message)
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}
