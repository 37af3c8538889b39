//! Worker slots handed out fairly between tenants.
//!
//! A FIFO semaphore lets one tenant that queues sixty jobs make every other
//! tenant wait behind all of them. Here waiters queue per tenant, and a
//! freed slot goes to the next tenant in turn (round robin over the tenants
//! that are waiting), so each waiting tenant gets one slot in every round.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// `slots` worker slots shared fairly by tenants.
#[derive(Debug)]
pub struct FairSlots {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free: usize,
    waiting: HashMap<String, VecDeque<oneshot::Sender<Slot>>>,
    /// Tenants with waiters, in turn order.
    turn: VecDeque<String>,
}

/// One worker slot; dropping it hands it to the next tenant in turn.
#[derive(Debug)]
pub struct Slot {
    owner: Option<Arc<FairSlots>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.release();
        }
    }
}

impl FairSlots {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(FairSlots {
            state: Mutex::new(State {
                free: slots,
                waiting: HashMap::new(),
                turn: VecDeque::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a slot for `tenant`. Dropping the future gives up its place
    /// (a slot already handed to it goes on to the next tenant).
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Slot {
        let receiver = {
            let mut state = self.state();
            if state.free > 0 && state.turn.is_empty() {
                state.free -= 1;
                return Slot {
                    owner: Some(Arc::clone(self)),
                };
            }
            let (sender, receiver) = oneshot::channel();
            let queue = state.waiting.entry(tenant.to_string()).or_default();
            queue.push_back(sender);
            if queue.len() == 1 {
                state.turn.push_back(tenant.to_string());
            }
            receiver
        };
        match receiver.await {
            Ok(slot) => slot,
            // The sender is only dropped by `release` after a failed send,
            // never while this receiver lives; wait again to be safe.
            Err(_) => Box::pin(self.acquire(tenant)).await,
        }
    }

    /// A slot came back: hand it to the next tenant in turn, or keep it.
    fn release(self: &Arc<Self>) {
        let mut state = self.state();
        while let Some(tenant) = state.turn.pop_front() {
            let Some(queue) = state.waiting.get_mut(&tenant) else {
                continue;
            };
            let Some(sender) = queue.pop_front() else {
                state.waiting.remove(&tenant);
                continue;
            };
            if queue.is_empty() {
                state.waiting.remove(&tenant);
            } else {
                state.turn.push_back(tenant);
            }
            let slot = Slot {
                owner: Some(Arc::clone(self)),
            };
            match sender.send(slot) {
                Ok(()) => return,
                // That waiter gave up: disarm the slot (no recursive
                // release under the lock) and try the next one.
                Err(mut slot) => {
                    slot.owner = None;
                }
            }
        }
        state.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_tenant_does_not_starve_a_quiet_one() {
        let slots = FairSlots::new(1);
        let first = slots.acquire("busy").await;
        // The busy tenant queues five more, then the quiet one asks once.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, tenant) in ["busy", "busy", "busy", "busy", "busy", "quiet"]
            .into_iter()
            .enumerate()
        {
            let slots = Arc::clone(&slots);
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let slot = slots.acquire(tenant).await;
                order.lock().unwrap().push((i, tenant));
                drop(slot);
            }));
            // Let each waiter register in order.
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        // Round robin: busy's first waiter, then quiet, then busy's rest.
        assert_eq!(order[0].1, "busy");
        assert_eq!(order[1].1, "quiet", "{order:?}");
        assert_eq!(order.len(), 6);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_slot_on() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let gave_up = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire("b").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        // The slot was not lost with the waiter that went away.
        let again = tokio::time::timeout(std::time::Duration::from_secs(1), slots.acquire("c"))
            .await
            .expect("a slot is free");
        drop(again);
        assert_eq!(slots.state().free, 1);
    }
}
