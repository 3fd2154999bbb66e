//! `approval-simulator`: the built-in approver. It answers each approval request on the
//! responses queue after a delay, by a policy (rules). It runs on the local stack, in the tests
//! and, unless Terraform's `approval_service = "external"` plugs a real approval service in
//! its place, in every deployed environment (docs/deploy.md).

use std::str::FromStr;
use std::sync::Mutex;

use fleet::{classify, Handler, Message, Outcome};

use crate::model::{ApprovalRequest, ApprovalResponse, APPROVED, REJECTED};

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

/// The simulator's handler.
#[derive(Debug)]
pub struct Simulator {
    sqs: aws_sdk_sqs::Client,
    responses_queue_url: String,
    policy: Policy,
    delay_secs: i32,
    rng: Mutex<fastrand::Rng>,
}

impl Simulator {
    /// Answers on `responses_queue_url`, `delay_secs` (0..=900) after each request.
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        responses_queue_url: String,
        policy: Policy,
        delay_secs: i32,
    ) -> Self {
        let seed = match policy {
            Policy::Random { seed, .. } => seed,
            _ => 0,
        };
        Self {
            sqs,
            responses_queue_url,
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

impl Handler for Simulator {
    async fn handle(&self, message: &Message) -> Outcome {
        let request: ApprovalRequest = match serde_json::from_str(&message.body) {
            Ok(r) => r,
            Err(e) => return Outcome::permanent("invalid-request", e.to_string()),
        };
        let (decision, reason) = self.decide(&request);
        let response = ApprovalResponse {
            post_id: request.post_id,
            decision: decision.to_owned(),
            reason,
        };
        let sent = self
            .sqs
            .send_message()
            .queue_url(&self.responses_queue_url)
            .delay_seconds(self.delay_secs)
            .message_body(serde_json::to_string(&response).expect("a response serialises"))
            .send()
            .await;
        match sent {
            Ok(_) => Outcome::Done,
            Err(err) => classify(&err).into_outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PostRequest;

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

    fn simulator(policy: &str) -> Simulator {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .build();
        Simulator::new(
            aws_sdk_sqs::Client::from_conf(config),
            "q".into(),
            policy.parse().unwrap(),
            0,
        )
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
}
