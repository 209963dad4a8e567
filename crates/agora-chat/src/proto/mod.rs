//! The I/O-free state machines. Each takes `now` and returns what to send or show; none reads a
//! clock, touches the network or spawns a task, so tests drive them directly and a simulation
//! can run many peers from a seed.

pub mod direct;
pub mod mailbox;
pub mod presence;
pub mod room;

#[cfg(test)]
mod tests {
    use crate::crypto::{Identity, mailbox_key};
    use crate::proto::direct::{self, Received, Receiver, Sender};
    use crate::proto::mailbox::{self, MailboxStore};
    use crate::wire::{
        AckRequest, Envelope, FetchRequest, Frame, Letter, MailboxRequest, MessageId, Timestamp,
    };
    use rand::{SeedableRng, rngs::StdRng};
    use std::time::Duration;

    /// Alice and Bob are never online together: Alice's message and Bob's receipt both travel
    /// through three mailbox holders, and every holder ends empty.
    #[test]
    fn offline_delivery_and_receipt_through_mailboxes() {
        let (alice, bob) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let holders: Vec<Identity> = (10..13).map(|n| Identity::from_seed([n; 32])).collect();
        let mut stores: Vec<MailboxStore> = holders
            .iter()
            .map(|h| MailboxStore::new(h.peer_id(), mailbox::Config::default()))
            .collect();
        let mut rng = StdRng::seed_from_u64(42);
        let t0 = Timestamp::from_millis(1_700_000_000_000);
        let hour = Duration::from_secs(3600);
        assert_ne!(mailbox_key(&alice.peer_id()), mailbox_key(&bob.peer_id()));

        // Alice, online alone: Bob is unreachable, so she seals and replicates to k holders.
        let mut outbox = Sender::new(alice.clone(), direct::Config::default());
        let id = MessageId::random(&mut rng);
        let msg = outbox
            .send(bob.peer_id(), id, "see you".into(), t0)
            .unwrap();
        let env = Envelope::seal(&alice, &Letter::Message(msg), t0, &mut rng).unwrap();
        for s in &mut stores {
            let req = MailboxRequest::decode(&MailboxRequest::Store(env.clone()).encode().unwrap());
            let MailboxRequest::Store(e) = req.unwrap() else {
                unreachable!()
            };
            s.store(e, t0).unwrap();
        }

        // Bob, online a day later alone: collects from every holder, deduplicates, receipts.
        let t1 = t0.saturating_add(24 * hour);
        let mut inbox = Receiver::new(bob.clone(), alice.peer_id(), direct::Config::default());
        let mut shown = Vec::new();
        let mut receipts = Vec::new();
        for (s, h) in stores.iter_mut().zip(&holders) {
            let page = s
                .fetch(&FetchRequest::new(&bob, h.peer_id(), t1), t1)
                .unwrap();
            let ids = page.envelopes.iter().map(|e| e.id).collect();
            for e in page.envelopes {
                let Letter::Message(m) = e.open(&bob).unwrap() else {
                    panic!("expected a message")
                };
                match inbox.handle_message(m, t1).unwrap() {
                    Received::Delivered { messages, receipt } => {
                        shown.extend(messages.into_iter().map(|m| m.body));
                        receipts.push(receipt);
                    }
                    other => receipts.push(other.receipt().clone()),
                }
            }
            s.ack(&AckRequest::new(&bob, h.peer_id(), t1, ids).unwrap(), t1)
                .unwrap();
        }
        assert_eq!(
            shown,
            ["see you"],
            "shown once although three holders had it"
        );
        let receipt =
            Envelope::seal(&bob, &Letter::Receipt(receipts[0].clone()), t1, &mut rng).unwrap();
        for s in &mut stores {
            s.store(receipt.clone(), t1).unwrap();
        }

        // Alice, online again alone: collects the receipt; her outbox empties.
        let t2 = t1.saturating_add(24 * hour);
        for (s, h) in stores.iter_mut().zip(&holders) {
            let page = s
                .fetch(&FetchRequest::new(&alice, h.peer_id(), t2), t2)
                .unwrap();
            let ids = page.envelopes.iter().map(|e| e.id).collect();
            for e in page.envelopes {
                let Letter::Receipt(r) = e.open(&alice).unwrap() else {
                    panic!("expected a receipt")
                };
                let _ = outbox.handle_receipt(&r);
            }
            s.ack(&AckRequest::new(&alice, h.peer_id(), t2, ids).unwrap(), t2)
                .unwrap();
            assert_eq!(s.total_bytes(), 0);
        }
        assert_eq!(outbox.pending_len(), 0);
    }
}
