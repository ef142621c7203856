//! Group commit across groups: one thread fsyncs the WAL for every write
//! that was waiting when the previous fsync finished.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Instant;

use rocksdb::DB;

type Done = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

/// Completes each waiter only after an fsync that started after its write.
#[derive(Clone)]
pub(crate) struct WalSyncer {
    tx: mpsc::Sender<Done>,
}

impl WalSyncer {
    pub(crate) fn start(db: Arc<DB>) -> Self {
        let (tx, rx) = mpsc::channel::<Done>();
        // Weak: the thread must not keep the DB (and its lock file) open once the store is dropped.
        let db = Arc::downgrade(&db);
        let spawned = std::thread::Builder::new().name("sluice-wal-sync".into()).spawn(move || run(db, rx));
        if let Err(e) = spawned {
            // Without the thread every waiter would hang; fail loudly instead.
            tracing::error!(error = %e, "cannot start the WAL sync thread");
        }
        Self { tx }
    }

    /// Calls `done` once everything written to the WAL so far is on disk.
    pub(crate) fn after_sync(&self, done: impl FnOnce(Result<(), std::io::Error>) + Send + 'static) {
        if let Err(mpsc::SendError(done)) = self.tx.send(Box::new(done)) {
            done(Err(std::io::Error::other("the WAL sync thread has stopped")));
        }
    }

    /// Waits until everything written to the WAL so far is on disk.
    pub(crate) async fn sync(&self) -> Result<(), std::io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_sync(move |result| {
            let _ = tx.send(result);
        });
        rx.await.map_err(|_| std::io::Error::other("the WAL sync thread has stopped"))?
    }
}

/// Whether the WAL flush fsyncs (always, but for the planted bug that skips it: the WAL is then written to the
/// OS's cache only, which a kill -9 keeps and a power cut loses).
fn wal_fsync() -> bool {
    #[cfg(feature = "planted-bugs")]
    if crate::planted_bug("skip-wal-fsync") {
        return false;
    }
    true
}

fn run(db: Weak<DB>, rx: mpsc::Receiver<Done>) {
    let fsync_seconds = metrics::histogram!("sluice_wal_fsync_seconds");
    let covered = metrics::histogram!("sluice_wal_fsync_covered_writes");
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let started = Instant::now();
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(wal_fsync()).map_err(|e| std::io::Error::other(e.to_string())),
            None => Err(std::io::Error::other("the store is closed")),
        };
        fsync_seconds.record(started.elapsed().as_secs_f64());
        covered.record(waiting.len() as f64);
        for done in waiting {
            done(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), e.to_string())));
        }
    }
}
