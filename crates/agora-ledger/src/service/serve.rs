//! Answering `/agora/ledger/1.0.0` ([`PROTOCOL`]): status, blocks from a height, and
//! submissions, admitted within per-peer budgets
//! ([`SUBMIT_TXS_PER_PEER`](super::SUBMIT_TXS_PER_PEER),
//! [`SUBMIT_BYTES_PER_PEER`](super::SUBMIT_BYTES_PER_PEER)) before any decoding, their
//! signatures checked on a blocking thread. Serving keeps no state of its own beyond the
//! budgets (each its own limiter) and [`REQUEST_QUEUE`].

use std::sync::Arc;

use agora_net::InboundRequest;
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::wire::{
    self, MAX_BLOCKS_BYTES, MAX_BLOCKS_PER_REQUEST, MAX_SUBMIT_BATCH, Request, Response,
};
use super::{BUDGET_SUBMIT_BYTES, BUDGET_SUBMIT_TXS, Ledger, LedgerError, PROTOCOL};
use crate::state::TxError;
use crate::tx::{Hash, Tx};

/// Requests of `/agora/ledger/1.0.0` waiting for the handler; more are refused.
const REQUEST_QUEUE: usize = 64;

impl Ledger {
    pub(super) fn serve(self: &Arc<Self>) -> Result<(), LedgerError> {
        let (tx, mut rx) = mpsc::channel::<InboundRequest>(REQUEST_QUEUE);
        self.net
            .serve(PROTOCOL, tx)
            .map_err(|e| LedgerError::Validator(format!("cannot serve {PROTOCOL}: {e}")))?;
        let ledger = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let Some(ledger) = ledger.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    match ledger.on_request(req.peer, &req.data).await {
                        Ok(response) => {
                            let _ = req.reply.send(wire::encode(&response));
                        }
                        Err(budget) => {
                            ledger.net.admission().refuse(budget);
                            req.reply.refuse(budget);
                        }
                    }
                });
            }
        });
        Ok(())
    }

    /// Checks a peer's submission of `txs` transactions in `bytes` request bytes against its
    /// budgets, spending them if it fits.
    fn admit_submission(&self, peer: PeerId, bytes: usize, txs: usize) -> Result<(), &'static str> {
        self.submit_bytes
            .check(&peer, bytes as f64)
            .map_err(|_| BUDGET_SUBMIT_BYTES)?;
        self.submit_txs
            .check(&peer, txs as f64)
            .map_err(|_| BUDGET_SUBMIT_TXS)
    }

    /// Answers a request, or `Err(budget)` when an admission budget refuses it (the requester
    /// gets the budget's name as the refusal reason).
    async fn on_request(
        self: &Arc<Self>,
        peer: PeerId,
        data: &[u8],
    ) -> Result<Response, &'static str> {
        let Some(request) = wire::decode::<Request>(data) else {
            return Ok(Response::Error("malformed request".into()));
        };
        Ok(match request {
            Request::Status => {
                let validator = self.is_validator();
                let inner = self.inner.lock().unwrap();
                Response::Status {
                    chain: self.chain,
                    height: inner.state.height,
                    digest: inner.digest,
                    validator,
                }
            }
            Request::Blocks { from, max } => {
                let store = self.store.clone();
                let max = max.clamp(1, MAX_BLOCKS_PER_REQUEST) as usize;
                match tokio::task::spawn_blocking(move || {
                    store.blocks_from(from.max(1), max, MAX_BLOCKS_BYTES)
                })
                .await
                {
                    Ok(Ok(blocks)) => Response::Blocks(blocks),
                    Ok(Err(e)) => Response::Error(e.to_string()),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
            Request::SubmitMany(txs) => {
                if txs.len() > MAX_SUBMIT_BATCH {
                    return Ok(Response::Error(format!(
                        "at most {MAX_SUBMIT_BATCH} transactions per request"
                    )));
                }
                // Before any decoding or signature work.
                self.admit_submission(peer, data.len(), txs.len())?;
                if self.mailbox().is_none() {
                    return Ok(Response::Error("this node is not a validator".into()));
                }
                Response::SubmittedMany(
                    self.submit_signed_many(&txs)
                        .await
                        .into_iter()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .collect(),
                )
            }
            Request::Submit(bytes) => {
                // Before any decoding or signature work.
                self.admit_submission(peer, data.len(), 1)?;
                if let Err(e) = Tx::decode(&bytes) {
                    return Ok(Response::Submitted(Err(e.to_string())));
                }
                if self.mailbox().is_none() {
                    return Ok(Response::Submitted(Err(
                        "this node is not a validator".into()
                    )));
                }
                let result = self
                    .submit_signed_many(&[bytes])
                    .await
                    .pop()
                    .expect("one answer per transaction");
                Response::Submitted(result.map_err(|e| e.to_string()))
            }
        })
    }

    // ---- submissions ----

    /// Submits a transaction signed elsewhere (a wallet): checked against the finalized state,
    /// then handed to a validator. Does not wait for finality.
    pub async fn submit_signed(&self, bytes: &[u8]) -> Result<Hash, LedgerError> {
        self.submit_signed_many(&[bytes.to_vec()])
            .await
            .pop()
            .expect("one answer per transaction")
    }

    /// Submits many transactions signed elsewhere: one answer each, in order. A validator
    /// hands them to its mempool at once (one batch signature check); another node checks
    /// them the same way and forwards those that pass to a validator in one request.
    pub async fn submit_signed_many(&self, txs: &[Vec<u8>]) -> Vec<Result<Hash, LedgerError>> {
        let Some(mailbox) = self.mailbox() else {
            return self.forward_many(txs).await;
        };
        // Decoding and the batch signature check run on a blocking thread, never on the
        // consensus application's: it is handed only transactions that passed.
        let checked = {
            let chain = self.chain;
            let owned = txs.to_vec();
            match tokio::task::spawn_blocking(move || decode_and_verify(&owned, &chain)).await {
                Ok(checked) => checked,
                Err(_) => return txs_stopped(txs.len()),
            }
        };
        let mut answers: Vec<Option<Result<Hash, LedgerError>>> = Vec::with_capacity(txs.len());
        let mut decoded = Vec::new();
        for result in checked {
            match result {
                Ok(tx) => {
                    decoded.push(tx);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut results = match mailbox.submit_verified(decoded).await {
            Some(results) => results.into_iter(),
            None => Vec::new().into_iter(),
        };
        answers
            .into_iter()
            .map(|answer| match answer {
                Some(answer) => answer,
                None => match results.next() {
                    Some(Ok(hash)) => Ok(hash),
                    Some(Err(e)) => Err(LedgerError::Rejected(e.to_string())),
                    None => Err(LedgerError::Stopped),
                },
            })
            .collect()
    }
}

/// Decodes submitted transactions and checks the transfers' signatures in one batch (ZIP-215,
/// the same rule as the mempool's): one answer each, in order. CPU-heavy: call it on a
/// blocking thread. Committee changes are passed through (the mempool checks their approvals
/// against the committee; at most `MAX_COMMITTEE_TXS` are held).
fn decode_and_verify(txs: &[Vec<u8>], chain: &Hash) -> Vec<Result<Tx, LedgerError>> {
    let decoded: Vec<Result<Tx, LedgerError>> = txs
        .iter()
        .map(|bytes| Tx::decode(bytes).map_err(|e| LedgerError::Rejected(e.to_string())))
        .collect();
    let signed: Vec<&crate::tx::SignedAccountTx> = decoded
        .iter()
        .filter_map(|tx| match tx {
            Ok(Tx::Account(signed)) => Some(signed),
            _ => None,
        })
        .collect();
    let valid = crate::tx::signatures_valid(&signed, chain);
    drop(signed);
    let mut valid = valid.into_iter();
    decoded
        .into_iter()
        .map(|tx| match tx {
            Ok(Tx::Account(signed)) => {
                if valid.next().unwrap_or(false) {
                    Ok(Tx::Account(signed))
                } else {
                    Err(LedgerError::Rejected(
                        crate::consensus::Rejected::Invalid(TxError::BadSignature).to_string(),
                    ))
                }
            }
            other => other,
        })
        .collect()
}

/// One `Stopped` answer per transaction.
fn txs_stopped(n: usize) -> Vec<Result<Hash, LedgerError>> {
    (0..n).map(|_| Err(LedgerError::Stopped)).collect()
}
