//! `notes-worker`: parse the configuration, build the store, run the engine.

use clap::Parser;
use notes_worker::{Config, DynamoNotes, NotesHandler};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let table = config.table;
    fleet::worker::run(
        env!("CARGO_PKG_NAME"),
        config.worker,
        |fleet::worker::Setup { sdk, .. }| async move {
            NotesHandler::new(DynamoNotes::new(fleet::dynamodb::client(&sdk), table))
        },
    )?;
    Ok(())
}
