//! The scraper's database connection lives on one thread of its own; the main loop and the
//! download tasks send it work and await the answer, so no async task ever blocks on SQLite.

use std::sync::mpsc;

use sluice_core::store::Store;
use tokio::sync::oneshot;

type Work = Box<dyn FnOnce(&mut Store) + Send>;

/// A cheap, cloneable handle to the store thread. The thread ends when the last handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    sender: mpsc::Sender<Work>,
}

impl StoreHandle {
    /// Starts the thread that owns `store` from now on (opened beforehand, off the async
    /// thread, by the shared start-up).
    pub fn start(store: Store) -> StoreHandle {
        let (sender, receiver) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut store = store;
                for work in receiver {
                    work(&mut store);
                }
            })
            .expect("the OS refused to start the store thread");
        StoreHandle { sender }
    }

    /// Runs `work` on the store thread and returns its result.
    ///
    /// Panics if the store thread is gone, which only happens after a panic on it (a bug):
    /// the daemon then exits and systemd restarts it.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> T {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Box::new(move |store| {
                let _ = reply.send(work(store));
            }))
            .expect("the store thread has stopped");
        answer.await.expect("the store thread dropped a request")
    }

    /// [`StoreHandle::call`] from a blocking thread (never from an async task).
    pub fn call_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> T {
        let (reply, answer) = mpsc::channel();
        self.sender
            .send(Box::new(move |store| {
                let _ = reply.send(work(store));
            }))
            .expect("the store thread has stopped");
        answer.recv().expect("the store thread dropped a request")
    }
}
