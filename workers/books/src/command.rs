//! A book command as the gateway queues it: attributes say what to do to which book, the body
//! is the client's JSON, byte for byte.

use fleet::{kind, Message};
use serde::Deserialize;

/// The gateway attributes naming the caller (docs/security.md), defined by the engine.
pub use fleet::message::{ATTR_API_KEY_ID, ATTR_OWNER_ID};

/// Message attribute: `CREATE`, `UPDATE` or `DELETE`.
pub const ATTR_COMMAND: &str = "command";
/// Message attribute: the book (also the FIFO message group).
pub const ATTR_BOOK_ID: &str = "bookId";
/// Message attribute: the command's id (the gateway's request id, or `<owner id>-<key>`).
pub use fleet::gateway::ATTR_REQUEST_ID;
/// Message attribute: the `If-Match` header, when given.
pub const ATTR_IF_MATCH: &str = "ifMatch";
/// Message attribute: when the gateway received the request, ms since the epoch.
pub use fleet::gateway::ATTR_RECEIVED_AT;

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /books`.
    Create,
    /// `PUT /books/{book_id}`: a full replacement at a known version.
    Update,
    /// `DELETE /books/{book_id}`.
    Delete,
}

impl Kind {
    /// The name stored in command records (and sent by the gateway).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "CREATE",
            Kind::Update => "UPDATE",
            Kind::Delete => "DELETE",
        }
    }
}

/// A book's fields, as the client sent them (the ISBN normalised to digits and `X`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Book {
    /// ISBN-10 or ISBN-13.
    pub isbn: String,
    /// Title.
    pub title: String,
    /// Author (the key of the by-author index).
    pub author: String,
    /// Year of publication. Any JSON spelling of an integer (`1999`, `1999.0`, `1.999e3`):
    /// the gateway's schema checks the value, not how it is written.
    #[serde(default, deserialize_with = "exact_year")]
    pub year: Option<i32>,
    /// Tags, in the client's order.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn exact_year<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
    if raw.get() == "null" {
        return Ok(None);
    }
    fleet::json::Decimal::parse(raw.get())
        .and_then(|year| year.to_i64())
        .and_then(|year| i32::try_from(year).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("year {} is not an integer", raw.get())))
}

/// One command, parsed from its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What it does.
    pub kind: Kind,
    /// To which book.
    pub book_id: String,
    /// Its id: what a client reads its outcome by, and what makes a replay apply once.
    pub request_id: String,
    /// Who sent it (owner id): the owner of the book it creates, and the only one whose update
    /// or delete of that book applies; its record is readable by this owner only.
    pub owner: String,
    /// The version the client based it on (`If-Match`).
    pub if_match: Option<u64>,
    /// When the gateway received it, ms since the epoch.
    pub received_at_ms: Option<u64>,
    /// The new state of the book (create, update).
    pub book: Option<Book>,
    /// SHA-256 of what the command says, to tell a replay from a reused key.
    pub payload_hash: String,
}

/// A message that is not a command the gateway could have sent: a fault upstream, for the DLQ
/// with its kind (`fleet::kind`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Malformed {
    /// `missing-attribute`, `invalid-json` or `invalid-message`.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Malformed {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A book as it is now: what explains a refused command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Its version.
    pub version: u64,
    /// Its owner id (`None`: a book created before books had owners, which no one may change).
    pub owner: Option<String>,
}

/// Why a well-formed command is refused: recorded where its client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code: `invalid-isbn`, `stale-version`, `not-found`, `already-exists`,
    /// `not-owner`.
    pub reason: &'static str,
    /// For humans.
    pub detail: String,
}

impl Command {
    /// Parses a command message.
    ///
    /// # Errors
    /// When an attribute is missing or invalid, or the body is not a book.
    pub fn from_message(message: &Message) -> Result<Self, Malformed> {
        let required = |name: &str| {
            message
                .attribute(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Malformed::new(
                        kind::MISSING_ATTRIBUTE,
                        format!("message attribute {name} is missing"),
                    )
                })
        };
        let kind = match required(ATTR_COMMAND)? {
            "CREATE" => Kind::Create,
            "UPDATE" => Kind::Update,
            "DELETE" => Kind::Delete,
            other => {
                return Err(Malformed::new(
                    kind::INVALID_MESSAGE,
                    format!("unknown command {other:?}"),
                ))
            }
        };
        let if_match = message
            .attribute(ATTR_IF_MATCH)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.trim_matches('"').parse::<u64>().map_err(|_| {
                    Malformed::new(
                        kind::INVALID_MESSAGE,
                        format!("If-Match {v:?} is not a version"),
                    )
                })
            })
            .transpose()?;
        if kind == Kind::Update && if_match.is_none() {
            return Err(Malformed::new(
                kind::MISSING_ATTRIBUTE,
                "an update without If-Match",
            ));
        }
        let book = match kind {
            Kind::Delete => None,
            Kind::Create | Kind::Update => {
                let mut book: Book = fleet::json::from_body(&message.body).map_err(|e| {
                    Malformed::new(
                        kind::of_json_error(&e),
                        format!("the body is not a book: {e}"),
                    )
                })?;
                book.isbn = book
                    .isbn
                    .chars()
                    .filter(|c| !matches!(c, '-' | ' '))
                    .map(|c| c.to_ascii_uppercase())
                    .collect();
                if book.title.trim().is_empty() || book.author.trim().is_empty() {
                    return Err(Malformed::new(
                        kind::INVALID_MESSAGE,
                        "a book needs a title and an author",
                    ));
                }
                Some(book)
            }
        };
        let book_id = required(ATTR_BOOK_ID)?.to_owned();
        let request_id = required(ATTR_REQUEST_ID)?.to_owned();
        // Who may do this is part of the command: without a sender it cannot be authorised.
        let owner = required(ATTR_OWNER_ID)
            .or_else(|_| required(ATTR_API_KEY_ID))
            .map_err(|_| {
                Malformed::new(
                    kind::MISSING_ATTRIBUTE,
                    format!("message attribute {ATTR_OWNER_ID} is missing"),
                )
            })?
            .to_owned();
        let payload_hash = payload_hash(kind, &book_id, if_match, book.as_ref());
        Ok(Self {
            kind,
            book_id,
            request_id,
            owner,
            if_match,
            received_at_ms: message.envelope().received_at_ms,
            book,
            payload_hash,
        })
    }

    /// What the gateway cannot check: the ISBN's check digit.
    ///
    /// # Errors
    /// The rejection to record.
    pub fn check(&self) -> Result<(), Rejection> {
        match &self.book {
            Some(book) if !isbn_is_valid(&book.isbn) => Err(Rejection {
                reason: "invalid-isbn",
                detail: format!("ISBN {} has a wrong check digit or length", book.isbn),
            }),
            _ => Ok(()),
        }
    }

    /// Why the store refused the command, from the book as it is now (`None`: no such book).
    /// `None` when the refusal is not explained by it (the book changed in between): then the
    /// command is tried again. Another owner's update or delete is `not-owner`, whatever its
    /// `If-Match`.
    pub fn rejection(&self, current: Option<&Current>) -> Option<Rejection> {
        if let (Kind::Update | Kind::Delete, Some(c)) = (self.kind, current) {
            if c.owner.as_deref() != Some(self.owner.as_str()) {
                return Some(Rejection {
                    reason: "not-owner",
                    detail: format!(
                        "book {} belongs to another owner: only its creator may change it",
                        self.book_id
                    ),
                });
            }
        }
        match (self.kind, current.map(|c| c.version), self.if_match) {
            (Kind::Create, Some(v), _) => Some(Rejection {
                reason: "already-exists",
                detail: format!("book {} already exists (version {v})", self.book_id),
            }),
            (Kind::Update | Kind::Delete, None, _) => Some(Rejection {
                reason: "not-found",
                detail: format!(
                    "book {} does not exist (never created, or deleted)",
                    self.book_id
                ),
            }),
            (Kind::Update | Kind::Delete, Some(v), Some(m)) if v != m => Some(Rejection {
                reason: "stale-version",
                detail: format!(
                    "If-Match {m} but book {} is at version {v}: read it again and resend",
                    self.book_id
                ),
            }),
            _ => None,
        }
    }

    /// The book's version once this command is applied, when known.
    pub fn next_version(&self) -> Option<u64> {
        match self.kind {
            Kind::Create => Some(1),
            Kind::Update | Kind::Delete => self.if_match.map(|m| m + 1),
        }
    }
}

/// ISBN-10 (weights 10..1, mod 11, `X` = 10 last) or ISBN-13 (weights 1,3, mod 10), given
/// digits only.
pub fn isbn_is_valid(isbn: &str) -> bool {
    let bytes = isbn.as_bytes();
    let digit = |b: u8| (b as char).to_digit(10);
    match bytes.len() {
        10 => {
            let mut sum = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let value = match (digit(b), b, i) {
                    (Some(d), _, _) => d,
                    (None, b'X', 9) => 10,
                    _ => return false,
                };
                sum += value * (10 - i as u32);
            }
            sum % 11 == 0
        }
        13 => {
            let mut sum = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let Some(d) = digit(b) else { return false };
                sum += d * if i % 2 == 0 { 1 } else { 3 };
            }
            sum % 10 == 0
        }
        _ => false,
    }
}

fn payload_hash(kind: Kind, book_id: &str, if_match: Option<u64>, book: Option<&Book>) -> String {
    let canonical = serde_json::json!({
        "command": kind.as_str(),
        "book_id": book_id,
        "if_match": if_match,
        "book": book.map(|b| serde_json::json!({
            "isbn": b.isbn, "title": b.title, "author": b.author, "year": b.year, "tags": b.tags,
        })),
    });
    fleet::util::sha256_hex(canonical.to_string().as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;

    pub(crate) fn message(attrs: &[(&str, &str)], body: &str) -> Message {
        let attributes = attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), fleet::dlq::string(v)))
            .collect();
        Message {
            message_id: "m-1".into(),
            body: body.into(),
            receive_count: 1,
            attributes,
            ..Message::default()
        }
    }

    pub(crate) const BOOK: &str =
        r#"{"isbn":"978-0-306-40615-7","title":"Dune","author":"Frank Herbert","tags":["sf"]}"#;

    pub(crate) fn command(kind: &str, if_match: Option<&str>, body: &str) -> Message {
        let mut attrs = vec![
            (ATTR_COMMAND, kind),
            (ATTR_BOOK_ID, "b-1"),
            (ATTR_REQUEST_ID, "r-1"),
            (ATTR_OWNER_ID, "owner-a"),
            (ATTR_RECEIVED_AT, "1700000000000"),
        ];
        if let Some(m) = if_match {
            attrs.push((ATTR_IF_MATCH, m));
        }
        message(&attrs, body)
    }

    #[test]
    fn isbn_check_digits() {
        for valid in ["0306406152", "9780306406157", "080442957X", "9781861972712"] {
            assert!(isbn_is_valid(valid), "{valid}");
        }
        for invalid in [
            "0306406153",
            "9780306406158",
            "X806406152",
            "978030640615",
            "",
        ] {
            assert!(!isbn_is_valid(invalid), "{invalid}");
        }
    }

    #[test]
    fn a_create_parses_with_its_isbn_normalised() {
        let c = Command::from_message(&command("CREATE", None, BOOK)).unwrap();
        assert_eq!(c.kind, Kind::Create);
        let book = c.book.as_ref().unwrap();
        assert_eq!(book.isbn, "9780306406157");
        assert_eq!(book.tags, ["sf"]);
        assert_eq!(c.received_at_ms, Some(1_700_000_000_000));
        assert_eq!(c.next_version(), Some(1));
        assert!(c.check().is_ok());
    }

    #[test]
    fn any_spelling_of_an_integer_year_and_duplicate_keys_read_like_the_gateway() {
        let year = |y: &str| {
            let body = BOOK.replacen('{', &format!("{{\"year\":{y},"), 1);
            Command::from_message(&command("CREATE", None, &body)).map(|c| c.book.unwrap().year)
        };
        assert_eq!(year("1999").unwrap(), Some(1999));
        assert_eq!(year("1999.0").unwrap(), Some(1999));
        assert_eq!(year("1.999e3").unwrap(), Some(1999));
        assert!(year("1999.5").is_err() && year("\"1999\"").is_err());
        let twice = BOOK.replacen('{', "{\"title\":\"first\",", 1);
        let c = Command::from_message(&command("CREATE", None, &twice)).unwrap();
        assert_ne!(c.book.unwrap().title, "first", "the last title wins");
    }

    #[test]
    fn if_match_may_be_quoted_and_an_update_needs_it() {
        let c = Command::from_message(&command("UPDATE", Some("\"4\""), BOOK)).unwrap();
        assert_eq!(c.if_match, Some(4));
        assert_eq!(c.next_version(), Some(5));
        assert!(Command::from_message(&command("UPDATE", None, BOOK)).is_err());
        assert!(Command::from_message(&command("UPDATE", Some("v4"), BOOK)).is_err());
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(Command::from_message(&command("RENAME", None, BOOK)).is_err());
        assert!(Command::from_message(&command("CREATE", None, "{}")).is_err());
        let extra = BOOK.replace("\"sf\"]", "\"sf\"],\"price\":3");
        assert!(Command::from_message(&command("CREATE", None, &extra)).is_err());
        let no_id = message(&[(ATTR_COMMAND, "DELETE"), (ATTR_REQUEST_ID, "r")], "{}");
        assert!(Command::from_message(&no_id).is_err());
    }

    #[test]
    fn a_wrong_check_digit_is_a_rejection() {
        let body = BOOK.replace("40615-7", "40615-8");
        let c = Command::from_message(&command("CREATE", None, &body)).unwrap();
        assert_eq!(c.check().unwrap_err().reason, "invalid-isbn");
    }

    fn at(version: u64, owner: Option<&str>) -> Current {
        Current {
            version,
            owner: owner.map(str::to_owned),
        }
    }

    #[test]
    fn refusals_are_explained_by_the_current_book() {
        let mine = Some("owner-a");
        let update = Command::from_message(&command("UPDATE", Some("2"), BOOK)).unwrap();
        assert_eq!(
            update.rejection(Some(&at(3, mine))).unwrap().reason,
            "stale-version"
        );
        assert_eq!(update.rejection(None).unwrap().reason, "not-found");
        assert_eq!(
            update.rejection(Some(&at(2, mine))),
            None,
            "changed in between: try again"
        );
        let create = Command::from_message(&command("CREATE", None, BOOK)).unwrap();
        assert_eq!(
            create
                .rejection(Some(&at(1, Some("owner-b"))))
                .unwrap()
                .reason,
            "already-exists"
        );
        let delete = Command::from_message(&command("DELETE", None, "{}")).unwrap();
        assert_eq!(delete.rejection(None).unwrap().reason, "not-found");
        assert_eq!(delete.next_version(), None);
    }

    #[test]
    fn another_owner_s_change_is_not_owner_whatever_its_version() {
        let update = Command::from_message(&command("UPDATE", Some("2"), BOOK)).unwrap();
        let delete = Command::from_message(&command("DELETE", None, "{}")).unwrap();
        for command in [&update, &delete] {
            for current in [at(2, Some("owner-b")), at(7, Some("owner-b")), at(2, None)] {
                assert_eq!(
                    command.rejection(Some(&current)).unwrap().reason,
                    "not-owner",
                    "{command:?} on {current:?}"
                );
            }
        }
    }

    #[test]
    fn the_sender_is_the_owner_id_else_the_api_key_id_and_required() {
        let c = Command::from_message(&command("CREATE", None, BOOK)).unwrap();
        assert_eq!(c.owner, "owner-a");
        let by_key = message(
            &[
                (ATTR_COMMAND, "DELETE"),
                (ATTR_BOOK_ID, "b-1"),
                (ATTR_REQUEST_ID, "r"),
                (ATTR_API_KEY_ID, "key-1"),
            ],
            "{}",
        );
        assert_eq!(Command::from_message(&by_key).unwrap().owner, "key-1");
        let nobody = message(
            &[
                (ATTR_COMMAND, "DELETE"),
                (ATTR_BOOK_ID, "b-1"),
                (ATTR_REQUEST_ID, "r"),
            ],
            "{}",
        );
        let err = Command::from_message(&nobody).unwrap_err();
        assert!(err.message.contains(ATTR_OWNER_ID), "{err}");
        assert_eq!(err.kind, kind::MISSING_ATTRIBUTE);
    }

    #[test]
    fn the_payload_hash_tells_a_replay_from_a_reused_key() {
        let a = Command::from_message(&command("UPDATE", Some("1"), BOOK)).unwrap();
        let spaced = BOOK.replace(',', ", ");
        let b = Command::from_message(&command("UPDATE", Some("1"), &spaced)).unwrap();
        assert_eq!(a.payload_hash, b.payload_hash, "same content, other bytes");
        let other =
            Command::from_message(&command("UPDATE", Some("1"), &BOOK.replace("Dune", "Emma")))
                .unwrap();
        assert_ne!(a.payload_hash, other.payload_hash);
        let stale = Command::from_message(&command("UPDATE", Some("2"), BOOK)).unwrap();
        assert_ne!(a.payload_hash, stale.payload_hash);
    }
}
