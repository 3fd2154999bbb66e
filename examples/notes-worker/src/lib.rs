//! # notes-worker: the example worker
//!
//! The smallest complete worker, in the shape every worker of the fleet has (see
//! docs/adding-a-worker.md): a [`Config`] that flattens the engine's settings, a handler over a
//! narrow store trait ([`NoteStore`]), its DynamoDB implementation ([`DynamoNotes`]), unit tests
//! over a fake store, and a `main` of a few lines. Copy it to start a new worker.
//!
//! A message is a note: the body `{"text": "..."}`, the note's id in the `noteId` attribute and
//! its owner in `ownerId` (both set by the gateway's mapping template). It is stored once under
//! `<owner>#<noteId>`: the same note again is a duplicate, the same id with another text a
//! conflict for the dead-letter queue, and a DynamoDB that throttles or is down a retry (the
//! engine classifies AWS errors; see `fleet::aws_error`).

use std::future::Future;

use aws_sdk_dynamodb::types::AttributeValue;
use clap::Parser;
use fleet::dynamodb::Insert;
use fleet::worker::WorkerArgs;
use fleet::{kind, AwsError, Handler, Message, Outcome};
use serde::Deserialize;

/// The message attribute holding the note's id.
pub const ATTR_NOTE_ID: &str = "noteId";
/// The table's partition key: `<owner>#<noteId>`.
pub const KEY: &str = "ownerNoteId";
/// The attribute holding a stored note's payload hash: what tells a replay (the same hash)
/// from a conflict (another).
pub const PAYLOAD_HASH: &str = "payloadHash";

/// Command line and environment of the `notes-worker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "notes-worker",
    version,
    about = "Stores notes from the notes queue"
)]
pub struct Config {
    /// Name of the notes table (partition key `ownerNoteId`).
    #[arg(long, env = "NOTES_TABLE", value_name = "NOTES_TABLE")]
    pub table: String,

    /// What every worker has: the engine, logs, threads.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// A note as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Whose note it is.
    pub owner: String,
    /// The client's id for it.
    pub id: String,
    /// What it says.
    pub text: String,
}

impl Note {
    /// SHA-256 of what the note says: the same note again has the same hash.
    pub fn payload_hash(&self) -> String {
        fleet::util::sha256_hex(self.text.as_bytes())
    }
}

/// Where notes are kept: the one call the handler needs.
pub trait NoteStore: Send + Sync + 'static {
    /// Writes the note unless its owner and id are taken (one conditional write).
    /// [`Insert::Exists`] carries the stored note's [`Note::payload_hash`].
    fn put_if_absent(&self, note: &Note) -> impl Future<Output = Result<Insert, AwsError>> + Send;
}

/// The handler: validate, store once, say what happened.
#[derive(Debug)]
pub struct NotesHandler<S> {
    store: S,
}

impl<S: NoteStore> NotesHandler<S> {
    /// A handler writing to `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

/// The body of a note message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    text: String,
}

impl<S: NoteStore> Handler for NotesHandler<S> {
    async fn handle(&self, message: &Message) -> Outcome {
        let (Some(id), Some(owner)) = (message.attribute(ATTR_NOTE_ID), message.owner()) else {
            return Outcome::permanent(kind::MISSING_ATTRIBUTE, "noteId or ownerId is missing");
        };
        // The key is `<owner>#<noteId>`: an owner with the separator could reach another's note.
        if owner.contains('#') {
            return Outcome::permanent(
                kind::INVALID_MESSAGE,
                format!("owner id {owner:?} contains '#', the key's separator"),
            );
        }
        let body: Body = match serde_json::from_str(&message.body) {
            Ok(body) => body,
            Err(err) => return Outcome::permanent(kind::of_json_error(&err), err.to_string()),
        };
        let note = Note {
            owner: owner.to_owned(),
            id: id.to_owned(),
            text: body.text,
        };
        match self.store.put_if_absent(&note).await {
            Ok(Insert::Created) => Outcome::Done,
            Ok(Insert::Exists { payload_hash }) if payload_hash == Some(note.payload_hash()) => {
                Outcome::Duplicate
            }
            Ok(Insert::Exists { .. }) => Outcome::permanent(
                kind::CONFLICT,
                format!("note {} is stored already with another text", note.id),
            ),
            Err(err) => err.into_outcome(),
        }
    }
}

/// The notes table in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoNotes {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoNotes {
    /// A store over `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }
}

impl NoteStore for DynamoNotes {
    async fn put_if_absent(&self, note: &Note) -> Result<Insert, AwsError> {
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(
                KEY,
                AttributeValue::S(format!("{}#{}", note.owner, note.id)),
            )
            .item("text", AttributeValue::S(note.text.clone()))
            .item(PAYLOAD_HASH, AttributeValue::S(note.payload_hash()))
            .condition_expression("attribute_not_exists(ownerNoteId)");
        // One call: written, or the stored row's hash when the condition fails.
        fleet::dynamodb::put_if_absent(request, PAYLOAD_HASH).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use fleet::dlq::string;
    use fleet::ErrorClass;

    use super::*;

    /// Notes in memory, and a failure to answer with instead when one is set.
    #[derive(Default)]
    struct FakeNotes {
        rows: Mutex<HashMap<(String, String), String>>,
        fail: Mutex<Option<AwsError>>,
    }

    impl NoteStore for FakeNotes {
        async fn put_if_absent(&self, note: &Note) -> Result<Insert, AwsError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            let mut rows = self.rows.lock().unwrap();
            let key = (note.owner.clone(), note.id.clone());
            if let Some(text) = rows.get(&key) {
                let stored = Note {
                    text: text.clone(),
                    ..note.clone()
                };
                return Ok(Insert::Exists {
                    payload_hash: Some(stored.payload_hash()),
                });
            }
            rows.insert(key, note.text.clone());
            Ok(Insert::Created)
        }
    }

    fn message(owner: &str, id: &str, body: &str) -> Message {
        Message {
            message_id: "m-1".into(),
            body: body.into(),
            attributes: HashMap::from([
                (ATTR_NOTE_ID.to_owned(), string(id)),
                (fleet::gateway::ATTR_OWNER_ID.to_owned(), string(owner)),
            ]),
            ..Message::default()
        }
    }

    fn kind_of(outcome: &Outcome) -> Option<&str> {
        match outcome {
            Outcome::Permanent(reason) => Some(&reason.kind),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_note_is_stored_once_and_another_text_under_its_id_is_a_conflict() {
        let handler = NotesHandler::new(FakeNotes::default());
        let note = message("alice", "n-1", r#"{"text":"hello"}"#);
        assert_eq!(handler.handle(&note).await, Outcome::Done);
        assert_eq!(handler.handle(&note).await, Outcome::Duplicate);
        let other = message("alice", "n-1", r#"{"text":"bye"}"#);
        assert_eq!(kind_of(&handler.handle(&other).await), Some(kind::CONFLICT));
        // Another owner's note of the same id is theirs.
        let bob = message("bob", "n-1", r#"{"text":"bye"}"#);
        assert_eq!(handler.handle(&bob).await, Outcome::Done);
        assert_eq!(handler.store.rows.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_message_that_is_not_a_note_is_dead_lettered_with_its_kind() {
        let handler = NotesHandler::new(FakeNotes::default());
        for (body, expected) in [
            ("not json", kind::INVALID_JSON),
            (r#"{"text":1}"#, kind::INVALID_MESSAGE),
            (r#"{"text":"x","extra":1}"#, kind::INVALID_MESSAGE),
        ] {
            let outcome = handler.handle(&message("alice", "n-1", body)).await;
            assert_eq!(kind_of(&outcome), Some(expected), "{body}");
        }
        let mut anonymous = message("alice", "n-1", r#"{"text":"x"}"#);
        anonymous.attributes.remove(fleet::gateway::ATTR_OWNER_ID);
        let outcome = handler.handle(&anonymous).await;
        assert_eq!(kind_of(&outcome), Some(kind::MISSING_ATTRIBUTE));
        // "alice#n" + "1" would be alice's note "n#1".
        let forged = message("alice#n", "1", r#"{"text":"x"}"#);
        let outcome = handler.handle(&forged).await;
        assert_eq!(kind_of(&outcome), Some(kind::INVALID_MESSAGE));
        assert!(handler.store.rows.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_throttled_store_is_a_retry_not_a_dead_letter() {
        let store = FakeNotes::default();
        *store.fail.lock().unwrap() = Some(AwsError {
            class: ErrorClass::Retryable,
            code: "ProvisionedThroughputExceededException".into(),
            message: "slow down".into(),
        });
        let handler = NotesHandler::new(store);
        let outcome = handler
            .handle(&message("alice", "n-1", r#"{"text":"x"}"#))
            .await;
        assert!(matches!(outcome, Outcome::Retry(_)), "{outcome:?}");
        assert!(handler.store.rows.lock().unwrap().is_empty());
    }
}
