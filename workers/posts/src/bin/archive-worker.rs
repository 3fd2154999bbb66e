//! `archive-worker`: archives expired posts exactly once; also sweeps for them.

use clap::Parser;
use posts::archive::store::DynamoArchiveStore;
use posts::archive::{sweep_every, ArchiveHandler, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let c = Config::parse();
    let every = c.sweep_interval();
    fleet::worker::run(env!("CARGO_BIN_NAME"), c.worker, |setup| async move {
        let dynamodb = fleet::dynamodb::client(&setup.sdk);
        if let Some(every) = every {
            let sqs = fleet::aws::sqs_client(&setup.sdk);
            let (db, table, queue) = (dynamodb.clone(), c.posts_table.clone(), c.archive_queue_url);
            setup.spawn(move |shutdown| sweep_every(db, sqs, table, queue, every, shutdown));
        }
        let store = DynamoArchiveStore::new(dynamodb, c.posts_table, c.archive_table);
        ArchiveHandler::new(store, &setup.metrics)
    })?;
    Ok(())
}
