//! `approval-simulator`: the built-in approver. It answers each approval request on the
//! responses queue after a delay, by a policy (rules). It runs on the local stack, in the tests
//! and, unless Terraform's `approval_service = "external"` plugs a real approval service in
//! its place, in every deployed environment (docs/deploy.md).
//!
//! The handler is generic over where the answers go ([`ApprovalResponses`]).

use std::str::FromStr;
use std::sync::Mutex;

use clap::Parser;
use fleet::worker::WorkerArgs;
use fleet::{kind, Handler, Message, Outcome};

use crate::approval_queues::ApprovalResponses;
use crate::model::{ApprovalRequest, ApprovalResponse, APPROVED, REJECTED};

/// Command line and environment of `approval-simulator`.
#[derive(Debug, Parser)]
#[command(
    name = "approval-simulator",
    version,
    about = "The built-in approver: answers approval requests by a policy, like an approval service"
)]
pub struct Config {
    /// Where the answers go.
    #[arg(long, env = "APPROVAL_RESPONSES_QUEUE_URL", value_name = "URL")]
    pub responses_queue_url: String,
    /// `approve-all`, `reject-words:W1,W2` or `random:SEED[:RATIO]`.
    #[arg(
        long,
        env = "APPROVAL_POLICY",
        default_value = "reject-words:spam,scam"
    )]
    pub policy: Policy,
    /// Seconds before an answer is visible (0-900; Terraform sets approval_delay_secs, 0 by
    /// default).
    #[arg(long, env = "APPROVAL_DELAY_SECS", default_value_t = 2,
          value_parser = clap::value_parser!(i32).range(0..=900))]
    pub delay_secs: i32,
    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// How the simulator decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// `approve-all`.
    ApproveAll,
    /// `reject-words:w1,w2`: reject a post whose title or body contains a word (any case).
    RejectWords(Vec<String>),
    /// `random:SEED[:RATIO]`: approve with probability RATIO (default 0.5), reproducibly.
    Random {
        /// The generator's seed.
        seed: u64,
        /// Chance of an approval, 0..=1.
        approve_ratio: f64,
    },
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, arg) = text.split_once(':').unwrap_or((text, ""));
        match name {
            "approve-all" => Ok(Policy::ApproveAll),
            "reject-words" if !arg.is_empty() => Ok(Policy::RejectWords(
                arg.split(',')
                    .map(|w| w.trim().to_lowercase())
                    .filter(|w| !w.is_empty())
                    .collect(),
            )),
            "random" => {
                let (seed, ratio) = arg.split_once(':').unwrap_or((arg, "0.5"));
                let seed = seed
                    .parse()
                    .map_err(|_| format!("random:SEED needs a whole number, not {seed:?}"))?;
                let approve_ratio: f64 =
                    ratio.parse().map_err(|_| format!("bad ratio {ratio:?}"))?;
                if !(0.0..=1.0).contains(&approve_ratio) {
                    return Err(format!(
                        "the ratio must be within 0..=1, not {approve_ratio}"
                    ));
                }
                Ok(Policy::Random {
                    seed,
                    approve_ratio,
                })
            }
            _ => Err(format!(
                "unknown policy {text:?}: approve-all, reject-words:W1,W2 or random:SEED[:RATIO]"
            )),
        }
    }
}

/// The simulator's handler, answering through any [`ApprovalResponses`].
#[derive(Debug)]
pub struct ApprovalSimulator<R> {
    responses: R,
    policy: Policy,
    delay_secs: i32,
    rng: Mutex<fastrand::Rng>,
}

impl<R: ApprovalResponses> ApprovalSimulator<R> {
    /// Answers on `responses`, `delay_secs` (0..=900) after each request.
    pub fn new(responses: R, policy: Policy, delay_secs: i32) -> Self {
        let seed = match policy {
            Policy::Random { seed, .. } => seed,
            _ => 0,
        };
        Self {
            responses,
            policy,
            delay_secs,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// The decision on a request, and the reason of a rejection.
    pub fn decide(&self, request: &ApprovalRequest) -> (&'static str, Option<String>) {
        match &self.policy {
            Policy::ApproveAll => (APPROVED, None),
            Policy::RejectWords(words) => {
                let text = format!("{} {}", request.post.title, request.post.body).to_lowercase();
                match words.iter().find(|w| text.contains(w.as_str())) {
                    Some(word) => (REJECTED, Some(format!("contains {word:?}"))),
                    None => (APPROVED, None),
                }
            }
            Policy::Random { approve_ratio, .. } => {
                if self.rng.lock().expect("rng lock").f64() < *approve_ratio {
                    (APPROVED, None)
                } else {
                    (REJECTED, Some("randomly rejected".into()))
                }
            }
        }
    }
}

impl<R: ApprovalResponses> Handler for ApprovalSimulator<R> {
    async fn handle(&self, message: &Message) -> Outcome {
        let request: ApprovalRequest = match serde_json::from_str(&message.body) {
            Ok(r) => r,
            Err(e) => return Outcome::permanent(kind::INVALID_MESSAGE, e.to_string()),
        };
        let (decision, reason) = self.decide(&request);
        let response = ApprovalResponse {
            post_id: request.post_id,
            decision: decision.to_owned(),
            reason,
        };
        match self.responses.send(&response, self.delay_secs).await {
            Ok(()) => Outcome::Done,
            Err(err) => err.into_outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet::{AwsError, ErrorClass};

    use super::*;
    use crate::model::PostRequest;

    /// The responses queue in memory: what was sent, with its delay.
    #[derive(Default)]
    struct FakeResponses {
        sent: Mutex<Vec<(ApprovalResponse, i32)>>,
        fail: Mutex<Option<AwsError>>,
    }

    impl ApprovalResponses for FakeResponses {
        async fn send(&self, response: &ApprovalResponse, delay_secs: i32) -> Result<(), AwsError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            self.sent
                .lock()
                .unwrap()
                .push((response.clone(), delay_secs));
            Ok(())
        }
    }

    fn request(title: &str) -> ApprovalRequest {
        ApprovalRequest {
            post_id: "p".into(),
            post: PostRequest {
                title: title.into(),
                body: "text".into(),
                author: "a".into(),
            },
        }
    }

    fn simulator(policy: &str) -> ApprovalSimulator<FakeResponses> {
        ApprovalSimulator::new(FakeResponses::default(), policy.parse().unwrap(), 0)
    }

    #[test]
    fn policies_parse_and_refuse_nonsense() {
        assert_eq!("approve-all".parse::<Policy>(), Ok(Policy::ApproveAll));
        assert_eq!(
            "reject-words:Spam, scam".parse::<Policy>(),
            Ok(Policy::RejectWords(vec!["spam".into(), "scam".into()]))
        );
        assert_eq!(
            "random:7".parse::<Policy>(),
            Ok(Policy::Random {
                seed: 7,
                approve_ratio: 0.5
            })
        );
        for bad in ["reject-words", "random:x", "random:1:2", "maybe"] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reject_words_matches_any_case_and_random_is_reproducible() {
        let s = simulator("reject-words:spam");
        assert_eq!(s.decide(&request("Buy SPAM now")).0, REJECTED);
        assert_eq!(s.decide(&request("Hello")).0, APPROVED);
        let decisions = |seed: &str| {
            let s = simulator(seed);
            (0..20)
                .map(|_| s.decide(&request("x")).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(decisions("random:42"), decisions("random:42"));
        assert!(
            decisions("random:42").contains(&APPROVED)
                && decisions("random:42").contains(&REJECTED)
        );
    }

    fn message(body: &str) -> Message {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    #[tokio::test]
    async fn a_request_is_answered_by_the_policy_after_the_delay() {
        let s = ApprovalSimulator::new(
            FakeResponses::default(),
            "reject-words:spam".parse().unwrap(),
            7,
        );
        let spam = r#"{"post_id":"p-1","title":"Spam","body":"b","author":"a"}"#;
        let fine = r#"{"post_id":"p-2","title":"Hi","body":"b","author":"a"}"#;
        assert_eq!(s.handle(&message(spam)).await, Outcome::Done);
        assert_eq!(s.handle(&message(fine)).await, Outcome::Done);
        let sent = s.responses.sent.lock().unwrap().clone();
        let answer = |post_id: &str, decision: &str, reason: Option<&str>| ApprovalResponse {
            post_id: post_id.into(),
            decision: decision.into(),
            reason: reason.map(str::to_owned),
        };
        assert_eq!(
            sent,
            [
                (answer("p-1", REJECTED, Some("contains \"spam\"")), 7),
                (answer("p-2", APPROVED, None), 7),
            ]
        );
    }

    #[tokio::test]
    async fn an_invalid_request_is_permanent_and_a_send_failure_retried() {
        let s = simulator("approve-all");
        match s.handle(&message(r#"{"post_id":"p-1"}"#)).await {
            Outcome::Permanent(reason) => assert_eq!(reason.kind, kind::INVALID_MESSAGE),
            other => panic!("expected permanent, got {other:?}"),
        }
        *s.responses.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Retryable,
            code: "timeout".into(),
            message: "no answer".into(),
        });
        let request = r#"{"post_id":"p-1","title":"t","body":"b","author":"a"}"#;
        assert_eq!(
            s.handle(&message(request)).await,
            Outcome::unavailable("timeout", "no answer")
        );
        assert!(s.responses.sent.lock().unwrap().is_empty());
    }
}
