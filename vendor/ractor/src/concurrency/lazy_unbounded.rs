// Copyright (c) Sean Lawlor
//
// This source code is licensed under both the MIT license found in the
// LICENSE-MIT file in the root directory of this source tree.

//! An unbounded single-consumer queue that allocates nothing until its first message.
//!
//! Every actor has a supervision port, but most actors never receive a supervision event:
//! only supervisors (and monitors, process-group listeners) do. tokio's unbounded channel
//! allocates its first block (32 slots of the message type, about 2.6 KB for
//! [crate::SupervisionEvent]) and two cache-padded heads when it is created; this queue is
//! a `Mutex<VecDeque>` and a [Notify](crate::concurrency::Notify) behind one small `Arc`,
//! and the `VecDeque` allocates on the first push. The port is rarely used, so a lock is
//! cheap enough; the actor's message port keeps tokio's lock-free channel.
//!
//! The API is the subset of tokio's `UnboundedSender` / `UnboundedReceiver` the actor
//! runtime uses, with the same semantics: `send` fails once the receiver is closed or
//! dropped, `recv` returns `None` once the queue is closed and empty.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use crate::concurrency::Notify;

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    ready: Notify,
}

struct Queue<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// The sending half; cheap to clone.
pub(crate) struct LazyUnboundedSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half (one consumer); dropping it closes the queue.
pub(crate) struct LazyUnboundedReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// The error of [LazyUnboundedReceiver::try_recv]: nothing queued, or closed and empty.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TryRecvError;

/// The queue's halves.
pub(crate) fn lazy_unbounded<T>() -> (LazyUnboundedSender<T>, LazyUnboundedReceiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            closed: false,
        }),
        ready: Notify::new(),
    });
    (
        LazyUnboundedSender {
            shared: shared.clone(),
        },
        LazyUnboundedReceiver { shared },
    )
}

impl<T> Clone for LazyUnboundedSender<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> LazyUnboundedSender<T> {
    /// Queue `item`; it comes back as the error when the receiver is closed or dropped.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        {
            let mut queue = self.shared.queue.lock().unwrap();
            if queue.closed {
                return Err(item);
            }
            queue.items.push_back(item);
        }
        // One consumer: a permit stored while it is not waiting is taken by its next wait.
        self.shared.ready.notify_one();
        Ok(())
    }
}

#[cfg(test)]
impl<T> LazyUnboundedSender<T> {
    /// How many items the queue has room for without allocating (0 until the first send).
    pub(crate) fn capacity(&self) -> usize {
        self.shared.queue.lock().unwrap().items.capacity()
    }
}

impl<T> LazyUnboundedReceiver<T> {
    /// The next item, waiting for one; `None` once closed and empty. Cancel-safe: an item
    /// is only taken by the poll that returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(next) = self.take() {
                return next;
            }
            self.shared.ready.notified().await;
        }
    }

    /// The next item without waiting.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.take() {
            Some(Some(item)) => Ok(item),
            _ => Err(TryRecvError),
        }
    }

    /// Refuse further sends; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        self.shared.queue.lock().unwrap().closed = true;
    }

    /// `Some(Some(item))`, `Some(None)` when closed and empty, `None` when it must wait.
    fn take(&self) -> Option<Option<T>> {
        let mut queue = self.shared.queue.lock().unwrap();
        match queue.items.pop_front() {
            Some(item) => Some(Some(item)),
            None if queue.closed => Some(None),
            None => None,
        }
    }
}

impl<T> Drop for LazyUnboundedReceiver<T> {
    fn drop(&mut self) {
        // Close, and drop what is left outside the lock (an item's drop may send again).
        let left = {
            let mut queue = self.shared.queue.lock().unwrap();
            queue.closed = true;
            std::mem::take(&mut queue.items)
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[crate::concurrency::test]
    async fn items_arrive_in_order_and_a_waiting_receiver_wakes() {
        let (tx, mut rx) = lazy_unbounded::<u32>();
        assert_eq!(rx.try_recv(), Err(TryRecvError));
        let waiter = crate::concurrency::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second, rx)
        });
        crate::concurrency::sleep(crate::concurrency::Duration::from_millis(10)).await;
        tx.send(1).unwrap();
        tx.clone().send(2).unwrap();
        let (first, second, mut rx) = waiter.await.unwrap();
        assert_eq!((first, second), (Some(1), Some(2)));
        tx.send(3).unwrap();
        rx.close();
        assert_eq!(tx.send(4), Err(4));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn nothing_is_allocated_for_items_until_the_first_send() {
        let (tx, rx) = lazy_unbounded::<[u8; 256]>();
        assert_eq!(rx.shared.queue.lock().unwrap().items.capacity(), 0);
        tx.send([0; 256]).unwrap();
        assert!(rx.shared.queue.lock().unwrap().items.capacity() >= 1);
        drop(rx);
        assert_eq!(tx.send([1; 256]), Err([1; 256]));
    }

    /// The actor runtime's supervision port: an actor that never supervises never allocates
    /// its queue; a supervisor gets its child's exit through it.
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    #[crate::concurrency::test]
    async fn an_actor_allocates_its_supervision_queue_only_when_it_supervises() {
        use crate::Actor;
        use crate::ActorCell;
        use crate::ActorId;
        use crate::ActorProcessingErr;
        use crate::ActorRef;
        use crate::SupervisionEvent;

        struct Child;
        #[cfg_attr(feature = "async-trait", crate::async_trait)]
        impl Actor for Child {
            type Msg = ();
            type State = ();
            type Arguments = ();
            async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
                Ok(())
            }
        }
        struct Parent(crate::concurrency::MpscUnboundedSender<ActorId>);
        #[cfg_attr(feature = "async-trait", crate::async_trait)]
        impl Actor for Parent {
            type Msg = ();
            type State = ();
            type Arguments = ();
            async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
                Ok(())
            }
            async fn handle_supervisor_evt(
                &self,
                _: ActorRef<()>,
                event: SupervisionEvent,
                _: &mut (),
            ) -> Result<(), ActorProcessingErr> {
                if let SupervisionEvent::ActorTerminated(who, _, _) = event {
                    let _ = self.0.send(who.get_id());
                }
                Ok(())
            }
        }
        let capacity = |cell: &ActorCell| cell.inner.supervision.capacity();

        let (tx, mut terminated) = crate::concurrency::mpsc_unbounded();
        let (parent, parent_handle) = Actor::spawn(None, Parent(tx), ()).await.unwrap();
        let (child, child_handle) = Actor::spawn_linked(None, Child, (), parent.get_cell())
            .await
            .unwrap();
        assert_eq!(capacity(&parent.get_cell()), 0);
        assert_eq!(capacity(&child.get_cell()), 0);

        child.stop(None);
        child_handle.await.unwrap();
        assert_eq!(terminated.recv().await, Some(child.get_id()));
        assert!(capacity(&parent.get_cell()) > 0);
        assert_eq!(capacity(&child.get_cell()), 0);

        parent.stop(None);
        parent_handle.await.unwrap();
        // A stopped actor's port refuses events, as tokio's closed channel did.
        let late = SupervisionEvent::ActorTerminated(child.get_cell(), None, None);
        assert!(parent.get_cell().send_supervisor_evt(late).is_err());
    }
}
