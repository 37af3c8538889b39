//! Long-poll waiters: `GET /v1/jobs/{id}?wait=N` waits here for its job to
//! end. One `watch` channel per job that someone waits on (one wake-up per
//! waiter of that job, not of every job); the entry goes with its last
//! waiter.
//!
//! Whoever ends a job on the server announces it: the queue when a job's
//! hold on its slot is dropped (after the slot is free, so a client told
//! its job ended can submit the next at once), cancellation of a queued
//! job, a reviewer's decision, and shutdown (every waiter).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

#[derive(Default)]
pub struct Waiters {
    jobs: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Waiters {
    fn jobs(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that changes when job `id` ends. Take it before reading
    /// the job's state, so no ending is missed; give it back with
    /// [`Waiters::stop_watching`].
    pub fn watch(&self, id: &str) -> watch::Receiver<bool> {
        self.jobs()
            .entry(id.to_string())
            .or_insert_with(|| watch::Sender::new(false))
            .subscribe()
    }

    /// Drop a waiter's registration (the entry goes with its last waiter).
    pub fn stop_watching(&self, id: &str, receiver: watch::Receiver<bool>) {
        drop(receiver);
        let mut jobs = self.jobs();
        if jobs.get(id).is_some_and(|s| s.receiver_count() == 0) {
            jobs.remove(id);
        }
    }

    /// Wake the waiters of a job that has ended.
    pub fn announce(&self, id: &str) {
        if let Some(sender) = self.jobs().remove(id) {
            let _ = sender.send(true);
        }
    }

    /// Wake every waiter (at shutdown: their jobs are interrupted).
    pub fn announce_all(&self) {
        for (_, sender) in self.jobs().drain() {
            let _ = sender.send(true);
        }
    }
}
