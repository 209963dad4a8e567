//! Payments and submissions from this node: signing, handing a transaction to the own engine
//! or to a validator (forwarding checked submissions on a follower), and waiting for finality.
//!
//! Pay owns this node's next sequence number ([`PayState`], the ledger's `pay` lock, taken
//! before the tip's and never together with sync's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::wire::{Request, Response};
use super::{Ledger, LedgerError};
use crate::account::Account;
use crate::state::TxError;
use crate::tx::{AccountTx, Action, Hash, Tx};

/// How long `pay` waits for finality before giving up.
pub const FINALITY_WAIT: Duration = Duration::from_secs(30);

/// Pay's own state (the ledger's `pay` lock; lock order: this, then the tip).
pub(super) struct PayState {
    /// Own next sequence number, counting submitted transactions not final yet.
    next_seq: u64,
}

impl PayState {
    pub(super) fn new(next_seq: u64) -> Self {
        PayState { next_seq }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Payment {
    pub hash: Hash,
    pub height: u64,
    pub finality_ms: u64,
    pub seq: u64,
    pub fee: u64,
    /// A market transaction's effect (fills, or why it changed nothing but the fee).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<crate::state::Effect>,
}

impl Ledger {
    /// Signs a transfer from this node's account, submits it to a validator and waits until a
    /// finalized block holds it.
    pub async fn pay(
        self: &Arc<Self>,
        to: Account,
        amount: u64,
        memo: Option<String>,
        fee: Option<u64>,
    ) -> Result<Payment, LedgerError> {
        self.act(Action::Transfer { to, amount, memo }, fee).await
    }

    /// Signs a market action from this node's account, submits it and waits for finality;
    /// the payment carries the action's effect.
    pub async fn market(
        self: &Arc<Self>,
        action: crate::market::MarketAction,
        fee: Option<u64>,
    ) -> Result<Payment, LedgerError> {
        self.act(Action::Market(action), fee).await
    }

    /// Signs any action from this node's account, submits it to a validator and waits until a
    /// finalized block holds it.
    pub async fn act(
        self: &Arc<Self>,
        action: Action,
        fee: Option<u64>,
    ) -> Result<Payment, LedgerError> {
        if !action.counterparties().iter().all(Account::is_usable) {
            return Err(TxError::BadRecipient.into());
        }
        let mut tips = self.tip.subscribe();
        let (tx, seq, fee) = {
            let mut pay = self.pay.lock().unwrap();
            let inner = self.inner.lock().unwrap();
            let fee = fee.unwrap_or(inner.state.min_fee);
            let state_seq = inner.state.account(&self.account).seq;
            let seq = pay.next_seq.max(state_seq);
            let signed = AccountTx {
                from: self.account,
                seq,
                fee,
                action,
            }
            .sign(&self.key, &self.chain);
            inner.state.check_queued(&signed)?;
            pay.next_seq = seq + 1;
            (Tx::Account(signed), seq, fee)
        };
        let hash = tx.hash();
        let started = Instant::now();
        if let Err(e) = self.submit(tx).await {
            // Not taken anywhere: the sequence number is free again.
            let mut pay = self.pay.lock().unwrap();
            let state_seq = self.balance(&self.account).seq;
            if pay.next_seq == seq + 1 {
                pay.next_seq = state_seq.max(seq);
            }
            return Err(e);
        }
        let waited = self
            .wait_final(&hash, &mut tips, || {
                // The sequence number was used, but not by this transaction.
                (self.balance(&self.account).seq > seq).then_some(LedgerError::Replaced(seq))
            })
            .await;
        match waited {
            Ok(height) => Ok(Payment {
                hash,
                height,
                finality_ms: started.elapsed().as_millis() as u64,
                seq,
                fee,
                effect: self.tx(&hash)?.and_then(|r| r.effect),
            }),
            Err(e) => {
                if matches!(e, LedgerError::NotFinal(_)) {
                    let mut pay = self.pay.lock().unwrap();
                    pay.next_seq = self.balance(&self.account).seq;
                }
                Err(e)
            }
        }
    }

    /// The tip moved and this account's sequence number there is `own_seq`: those below it are
    /// used (called by `apply` after it released the tip).
    pub(super) fn own_seq_applied(&self, own_seq: u64) {
        let mut pay = self.pay.lock().unwrap();
        pay.next_seq = pay.next_seq.max(own_seq);
    }

    /// Waits until a finalized block holds `hash` and returns its height. `lost` says when the
    /// transaction can no longer be included (checked after each new block).
    pub(super) async fn wait_final(
        &self,
        hash: &Hash,
        tips: &mut broadcast::Receiver<u64>,
        lost: impl Fn() -> Option<LedgerError>,
    ) -> Result<u64, LedgerError> {
        let deadline = tokio::time::Instant::now() + FINALITY_WAIT;
        loop {
            if let Some((height, _)) = self.store.tx_location(hash)? {
                return Ok(height);
            }
            if let Some(error) = lost() {
                // (Final after all, between the two checks?)
                if let Some((height, _)) = self.store.tx_location(hash)? {
                    return Ok(height);
                }
                return Err(error);
            }
            tokio::select! {
                _ = tips.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(LedgerError::NotFinal(FINALITY_WAIT));
                }
                _ = self.stop.cancelled() => return Err(LedgerError::Stopped),
            }
        }
    }

    /// Hands a transaction to the own engine, or to the first validator that takes it.
    pub(super) async fn submit(&self, tx: Tx) -> Result<Hash, LedgerError> {
        let mailbox = self.mailbox();
        if let Some(mailbox) = mailbox {
            return match mailbox.submit(tx).await {
                Some(Ok(hash)) => Ok(hash),
                Some(Err(e)) => Err(LedgerError::Rejected(e.to_string())),
                None => Err(LedgerError::Stopped),
            };
        }
        let bytes = tx.encode();
        let mut last_error = String::from("no validator is known");
        for peer in self.committee_peers() {
            match self.ask(peer, &Request::Submit(bytes.clone())).await {
                Ok(Response::Submitted(Ok(hash))) => return Ok(hash),
                Ok(Response::Submitted(Err(e))) => return Err(LedgerError::Rejected(e)),
                Ok(_) => last_error = format!("{peer}: unexpected answer"),
                Err(e) => last_error = format!("{peer}: {e}"),
            }
        }
        Err(LedgerError::NoValidator(last_error))
    }

    /// A follower's `submit_signed_many`: checks against the finalized state here (signatures
    /// in one batch), then forwards what passed to the first validator that answers.
    pub(super) async fn forward_many(&self, txs: &[Vec<u8>]) -> Vec<Result<Hash, LedgerError>> {
        let mut answers: Vec<Option<Result<Hash, LedgerError>>> = Vec::with_capacity(txs.len());
        let mut decoded: Vec<(usize, Tx)> = Vec::new();
        for (i, bytes) in txs.iter().enumerate() {
            match Tx::decode(bytes) {
                Ok(tx) => {
                    decoded.push((i, tx));
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(LedgerError::Rejected(e.to_string())))),
            }
        }
        {
            let signed: Vec<&crate::tx::SignedAccountTx> = decoded
                .iter()
                .filter_map(|(_, tx)| match tx {
                    Tx::Account(signed) => Some(signed),
                    Tx::Committee(_) => None,
                })
                .collect();
            let mut valid = crate::tx::signatures_valid(&signed, &self.chain).into_iter();
            let inner = self.inner.lock().unwrap();
            for (i, tx) in &decoded {
                let verdict = match tx {
                    Tx::Account(signed) => {
                        if !valid.next().unwrap_or(false) {
                            Err(TxError::BadSignature)
                        } else if !signed
                            .body
                            .action
                            .counterparties()
                            .iter()
                            .all(Account::is_usable)
                        {
                            Err(TxError::BadRecipient)
                        } else {
                            inner.state.check_queued(signed)
                        }
                    }
                    Tx::Committee(_) => inner.state.check(tx, false),
                };
                if let Err(e) = verdict {
                    answers[*i] = Some(Err(e.into()));
                }
            }
        }
        let pending: Vec<usize> = (0..answers.len())
            .filter(|i| answers[*i].is_none())
            .collect();
        let forward: Vec<Vec<u8>> = pending.iter().map(|i| txs[*i].clone()).collect();
        let mut outcome = Err(String::from("no validator is known"));
        if !forward.is_empty() {
            for peer in self.committee_peers() {
                match self.ask(peer, &Request::SubmitMany(forward.clone())).await {
                    Ok(Response::SubmittedMany(results)) if results.len() == forward.len() => {
                        outcome = Ok(results);
                        break;
                    }
                    Ok(_) => outcome = Err(format!("{peer}: unexpected answer")),
                    Err(e) => outcome = Err(format!("{peer}: {e}")),
                }
            }
        }
        match outcome {
            Ok(results) => {
                for (i, result) in pending.into_iter().zip(results) {
                    answers[i] = Some(result.map_err(LedgerError::Rejected));
                }
            }
            Err(why) => {
                for i in pending {
                    answers[i] = Some(Err(LedgerError::NoValidator(why.clone())));
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every transaction answered"))
            .collect()
    }
}
