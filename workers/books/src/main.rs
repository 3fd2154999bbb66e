//! `books-worker`: parse configuration, build the store, run the engine.

use books_worker::store::DynamoStore;
use books_worker::{BooksHandler, Config};
use clap::Parser;

/// mimalloc: the SDK allocates many small, short-lived buffers per call.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (books, commands) = (config.books_table, config.commands_table);
    fleet::worker::run(
        env!("CARGO_PKG_NAME"),
        config.worker,
        |fleet::worker::Setup { sdk, metrics, .. }| async move {
            let dynamodb = fleet::dynamodb::client(&sdk);
            BooksHandler::new(
                DynamoStore::new(dynamodb, books, commands, &metrics),
                &metrics,
            )
        },
    )?;
    Ok(())
}
