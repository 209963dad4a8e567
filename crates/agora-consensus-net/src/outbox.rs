//! The bounded queue of messages waiting for one peer's writer task.
//!
//! Senders push from any thread or runtime and never wait: the queue is a `std` mutex around
//! two deques, and the writer is woken through a [`Notify`] (which needs no runtime). When the
//! queue is over its message or byte budget the oldest messages go first, non-priority ones
//! before priority ones: consensus tolerates loss, and a fresh vote is worth more than a stale
//! one.

use std::{collections::VecDeque, sync::Mutex};

use commonware_actor::Feedback;
use commonware_runtime::IoBuf;
use tokio::sync::Notify;

/// A message for one peer on one channel.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) channel: u64,
    pub(crate) payload: IoBuf,
    /// Jumps ahead of non-priority messages.
    pub(crate) priority: bool,
}

/// One peer's queue. Single consumer: only that peer's writer task pops.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    max_len: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    priority: VecDeque<Item>,
    normal: VecDeque<Item>,
    bytes: usize,
    closed: bool,
}

impl Queue {
    fn len(&self) -> usize {
        self.priority.len() + self.normal.len()
    }
}

impl Outbox {
    /// A queue holding at most `max_len` messages and `max_bytes` payload bytes (both at least
    /// one message's worth: the caller makes `max_bytes >= max_message`).
    pub(crate) fn new(max_len: usize, max_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            max_len: max_len.max(1),
            max_bytes,
        }
    }

    /// Queues `item`, evicting the oldest messages if the queue is over budget. `Ok` if nothing
    /// was evicted, `Backoff` if something was (the overflow policy handled it), `Closed` once
    /// the peer's writer is gone.
    pub(crate) fn push(&self, item: Item) -> Feedback {
        let evicted = {
            let mut queue = self.queue.lock().expect("outbox lock poisoned");
            if queue.closed {
                return Feedback::Closed;
            }
            queue.bytes += item.payload.len();
            if item.priority {
                queue.priority.push_back(item);
            } else {
                queue.normal.push_back(item);
            }
            let mut evicted = Vec::new();
            while queue.len() > self.max_len || queue.bytes > self.max_bytes {
                let Some(old) = queue
                    .normal
                    .pop_front()
                    .or_else(|| queue.priority.pop_front())
                else {
                    break;
                };
                queue.bytes -= old.payload.len();
                evicted.push(old);
            }
            evicted
            // The evicted payloads are dropped after the lock is released.
        };
        self.ready.notify_one();
        if evicted.is_empty() {
            Feedback::Ok
        } else {
            tracing::trace!(dropped = evicted.len(), "outbox full; dropped oldest");
            Feedback::Backoff
        }
    }

    /// The next message to write, priority ones first.
    pub(crate) fn pop(&self) -> Option<Item> {
        let mut queue = self.queue.lock().expect("outbox lock poisoned");
        let item = queue
            .priority
            .pop_front()
            .or_else(|| queue.normal.pop_front())?;
        queue.bytes -= item.payload.len();
        Some(item)
    }

    /// Puts back at the front a message that could not be written (the stream broke before
    /// any of it went out, or part of it did and the peer discards the truncated frame), so
    /// the next stream carries it. Dropped instead if the queue has no room left.
    pub(crate) fn requeue(&self, item: Item) {
        let mut queue = self.queue.lock().expect("outbox lock poisoned");
        if queue.closed
            || queue.len() >= self.max_len
            || queue.bytes + item.payload.len() > self.max_bytes
        {
            return;
        }
        queue.bytes += item.payload.len();
        if item.priority {
            queue.priority.push_front(item);
        } else {
            queue.normal.push_front(item);
        }
    }

    /// Resolves once a message was pushed since the last wait (cancel-safe; a push that came
    /// before the wait leaves a permit, so no wake-up is lost).
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Refuses further pushes and drops what is queued.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut queue = self.queue.lock().expect("outbox lock poisoned");
            queue.closed = true;
            queue.bytes = 0;
            (
                std::mem::take(&mut queue.priority),
                std::mem::take(&mut queue.normal),
            )
        };
        drop(dropped);
    }

    /// Messages queued now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(channel: u64, payload: &[u8]) -> Item {
        Item {
            channel,
            payload: IoBuf::copy_from_slice(payload),
            priority: false,
        }
    }

    fn urgent(channel: u64, payload: &[u8]) -> Item {
        Item {
            priority: true,
            ..item(channel, payload)
        }
    }

    fn drain(outbox: &Outbox) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| outbox.pop())
            .map(|i| i.payload.as_ref().to_vec())
            .collect()
    }

    #[test]
    fn keeps_order_and_puts_priority_first() {
        let outbox = Outbox::new(8, 1024);
        assert_eq!(outbox.push(item(0, b"a")), Feedback::Ok);
        assert_eq!(outbox.push(item(0, b"b")), Feedback::Ok);
        assert_eq!(outbox.push(urgent(1, b"p")), Feedback::Ok);
        assert_eq!(drain(&outbox), [b"p", b"a", b"b"]);
    }

    #[test]
    fn drops_the_oldest_when_over_the_message_budget() {
        let outbox = Outbox::new(2, 1024);
        assert_eq!(outbox.push(urgent(0, b"p")), Feedback::Ok);
        assert_eq!(outbox.push(item(0, b"1")), Feedback::Ok);
        // Over budget: the oldest non-priority message makes room.
        assert_eq!(outbox.push(item(0, b"2")), Feedback::Backoff);
        assert_eq!(outbox.len(), 2);
        assert_eq!(drain(&outbox), [b"p", b"2"]);
    }

    #[test]
    fn drops_the_oldest_when_over_the_byte_budget() {
        let outbox = Outbox::new(100, 4);
        assert_eq!(outbox.push(item(0, b"ab")), Feedback::Ok);
        assert_eq!(outbox.push(item(0, b"cd")), Feedback::Ok);
        assert_eq!(outbox.push(item(0, b"e")), Feedback::Backoff);
        assert_eq!(drain(&outbox), [b"cd".as_slice(), b"e"]);
        // The accounting returns to zero once drained.
        assert_eq!(outbox.push(item(0, b"wxyz")), Feedback::Ok);
    }

    #[test]
    fn a_requeued_message_goes_out_first_if_there_is_room() {
        let outbox = Outbox::new(2, 1024);
        assert_eq!(outbox.push(item(0, b"a")), Feedback::Ok);
        assert_eq!(outbox.push(item(0, b"b")), Feedback::Ok);
        let a = outbox.pop().unwrap();
        outbox.requeue(a.clone());
        assert_eq!(outbox.len(), 2);
        let a = outbox.pop().unwrap();
        assert_eq!(outbox.push(item(0, b"c")), Feedback::Ok);
        // Full again: the requeued (oldest) message is the one given up.
        outbox.requeue(a);
        assert_eq!(drain(&outbox), [b"b", b"c"]);
    }

    #[test]
    fn a_closed_outbox_refuses_and_forgets() {
        let outbox = Outbox::new(4, 1024);
        assert_eq!(outbox.push(item(0, b"a")), Feedback::Ok);
        outbox.close();
        assert_eq!(outbox.push(item(0, b"b")), Feedback::Closed);
        assert!(outbox.pop().is_none());
    }
}
