//! Issued currencies, trust lines, order books and cross-currency payments: the part of the
//! state machine that makes the ledger a payment network and a currency market, after the XRP
//! Ledger. Pure and deterministic like the rest of [`crate::state`].
//!
//! # Trust lines
//! A holder accepts up to a limit of an issued currency `(code, issuer)` with `TrustSet`. The
//! line's balance is what the issuer owes the holder (never negative: holders do not lend to
//! issuers, and nothing ripples through a holder). The issuer pays a holder by creating the
//! IOU; a holder pays the issuer by redeeming it; two holders pay each other through the issuer
//! (the sender's line goes down, the receiver's up). A transfer fee set by the issuer
//! (`AccountSet`, in millionths) is paid by the sender on top and destroyed; it is not charged
//! when the issuer sends or receives. An issuer that requires authorisation must `Authorize`
//! each line before it can hold anything. Nothing lands on a line beyond its limit, and a limit
//! cannot be set below the balance; a line at zero balance is removed by setting its limit to
//! zero.
//!
//! # Offers and books
//! `OfferCreate` sells an amount of one currency for an amount of another at the rate the two
//! make ([`Rate`], rounded up to the tick size in the owner's favour). It first crosses the
//! opposite book — best rate first, then oldest — at the resting offers' rates, and, when
//! neither side is AGR, also the two books through AGR whenever that path's combined rate is
//! better (auto-bridging). What is left rests in the book at the offer's own rate, unless the
//! offer is immediate-or-cancel; a fill-or-kill offer that does not fill entirely fails; a
//! passive offer does not take offers at exactly its own rate; a sell offer sells all it
//! offered even when that buys more than it asked for. An offer whose owner can no longer pay
//! (or receive) what it offers is removed when a taker finds it. An account never takes its own
//! offers.
//!
//! # Payments
//! `Pay` delivers an exact amount to a recipient: directly when the sender holds the currency
//! (or is its issuer), otherwise through the books from the currency of `send_max`, spending at
//! most `send_max`. Paths are found by every validator the same way and are bounded: the direct
//! book, through AGR, through each of the first [`MAX_MIDDLES`] currencies the source currency
//! has a book into, and through such a currency then AGR — at most three books. Each step
//! takes the path whose best offers combine to the best rate. With `partial`, what can be
//! delivered within `send_max` is; without it, the payment delivers exactly or fails.
//!
//! # Failure, reserve, invariants
//! A market transaction that passes the checks every transaction passes (signature, sequence,
//! fee) is included even when it cannot be carried out: then it changes nothing but the fee and
//! the sequence number, and its effect names the reason. Each trust line and resting offer
//! needs [`crate::state::State::owner_reserve`] AGR of the owner's balance that transfers and
//! offers cannot spend. After every market transaction the changes are checked: for every
//! issued currency the holders' balances moved exactly as much as the issuer's obligations;
//! AGR moved only as much as the fee burned; no line is above its limit; every fill paid its
//! offer's owner at least the offer's rate. A violation is a bug: the transaction is undone
//! and reported as failed rather than committed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::amount::{Amount, Currency, Issue, Rate};
use crate::state::{AccountState, State};

/// Currencies (besides AGR) a payment may pass through, the first in key order among those the
/// source currency has a book into.
pub const MAX_MIDDLES: usize = 6;
/// Offers one transaction may look at (take, or remove as unfunded): the bound on its work.
pub const MAX_OFFERS_TOUCHED: usize = 1_000;
/// Largest transfer fee: 100 % (in millionths).
pub const MAX_TRANSFER_FEE_PPM: u32 = 1_000_000;

/// A holder's line of an issued currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Atoms the issuer owes the holder.
    pub balance: u128,
    pub limit: u128,
    /// Whether the issuer allows the line (always, unless it requires authorisation).
    pub authorized: bool,
}

/// An issuer's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerSettings {
    pub require_auth: bool,
    /// Paid by the sender on top of a transfer between two holders, in millionths.
    pub transfer_fee_ppm: u32,
}

/// An offer's id: its owner and the sequence number of the transaction that placed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OfferId {
    pub owner: Account,
    pub seq: u64,
}

/// A resting offer: sells `remaining` of `sells` at `rate` units of `buys` per unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub sells: Currency,
    pub buys: Currency,
    pub remaining: u128,
    pub rate: Rate,
    /// Placement order, for time priority within a rate.
    pub age: u64,
}

/// An offer's place in its book: ordered by rate (best first), then age.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BookKey {
    pub sells: Currency,
    pub buys: Currency,
    pub rate: Rate,
    pub age: u64,
    pub id: OfferId,
}

/// The market part of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Market {
    pub lines: BTreeMap<(Account, Issue), Line>,
    /// What each issuer owes, in total, per currency: the sum of its holders' balances.
    pub obligations: BTreeMap<Issue, u128>,
    pub issuers: BTreeMap<Account, IssuerSettings>,
    pub offers: BTreeMap<OfferId, Offer>,
    pub books: BTreeSet<BookKey>,
    /// Lines and offers each account owns (each needs the owner reserve).
    pub owned: BTreeMap<Account, u32>,
    pub next_age: u64,
    /// The hash of every offer and line, kept current as they change, for the state root
    /// ([`Market::digest`]). Not stored: rebuilt by [`Market::prepare`] after loading.
    #[serde(skip)]
    digests: EntryDigests,
}

/// Per-entry hashes of the two maps that grow with use. A cache of what the maps hold, so
/// it takes no part in comparing markets.
#[derive(Clone, Debug, Default)]
struct EntryDigests {
    /// Whether the maps below are complete (false after loading until `prepare`).
    ready: bool,
    offers: BTreeMap<OfferId, [u8; 32]>,
    lines: BTreeMap<(Account, Issue), [u8; 32]>,
}

impl PartialEq for EntryDigests {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for EntryDigests {}

/// The hash of one map entry, under a tag naming the map.
fn entry_digest<K: Serialize, V: Serialize>(tag: u8, key: &K, value: &V) -> [u8; 32] {
    let bytes = postcard::to_allocvec(&(key, value)).expect("encoding cannot fail");
    let mut h = blake3::Hasher::new();
    h.update(&[tag]);
    h.update(&bytes);
    *h.finalize().as_bytes()
}

/// Sets `map[key]` to `value` (or removes it) and returns what was there, keeping
/// `digests[key]` in line when the hashes are kept.
fn put<K: Ord + Copy + Serialize, V: Serialize>(
    map: &mut BTreeMap<K, V>,
    digests: Option<&mut BTreeMap<K, [u8; 32]>>,
    tag: u8,
    key: K,
    value: Option<V>,
) -> Option<V> {
    if let Some(digests) = digests {
        match &value {
            Some(v) => digests.insert(key, entry_digest(tag, &key, v)),
            None => digests.remove(&key),
        };
    }
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    }
}

/// Feeds `map`'s length and its entries' hashes, in key order, to `h`: the kept ones if
/// there are, else computed here (the same bytes either way).
fn hash_entries<K: Serialize, V: Serialize>(
    h: &mut blake3::Hasher,
    map: &BTreeMap<K, V>,
    kept: Option<&BTreeMap<K, [u8; 32]>>,
    tag: u8,
) {
    h.update(&(map.len() as u64).to_le_bytes());
    match kept {
        Some(kept) => kept.values().for_each(|d| {
            h.update(d);
        }),
        None => map.iter().for_each(|(k, v)| {
            h.update(&entry_digest(tag, k, v));
        }),
    }
}

const OFFER_TAG: u8 = 0;
const LINE_TAG: u8 = 1;

impl Market {
    /// Builds the entry hashes if they are missing (a market just loaded or built by hand);
    /// from then on every change keeps them current. Execution calls it on the state it
    /// copies, so a block pays for the entries it changes, not for all of them.
    pub fn prepare(&mut self) {
        if self.digests.ready {
            return;
        }
        self.digests.offers = self
            .offers
            .iter()
            .map(|(k, v)| (*k, entry_digest(OFFER_TAG, k, v)))
            .collect();
        self.digests.lines = self
            .lines
            .iter()
            .map(|(k, v)| (*k, entry_digest(LINE_TAG, k, v)))
            .collect();
        self.digests.ready = true;
    }

    /// Sets or removes an offer (its hash follows): the only way offers change.
    fn put_offer(&mut self, id: OfferId, offer: Option<Offer>) -> Option<Offer> {
        let ready = self.digests.ready;
        let digests = ready.then_some(&mut self.digests.offers);
        put(&mut self.offers, digests, OFFER_TAG, id, offer)
    }

    /// Sets or removes a trust line (its hash follows): the only way lines change.
    fn put_line(&mut self, key: (Account, Issue), line: Option<Line>) -> Option<Line> {
        let ready = self.digests.ready;
        let digests = ready.then_some(&mut self.digests.lines);
        put(&mut self.lines, digests, LINE_TAG, key, line)
    }

    /// The market's hash in the state root: the small maps encoded whole, offers and lines
    /// through their entries' hashes in key order (one pass over 32-byte hashes when they
    /// are kept, instead of encoding every offer each block). The same value whether the
    /// hashes are kept or computed here.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"agora-ledger/market/2");
        let small = postcard::to_allocvec(&(
            &self.obligations,
            &self.issuers,
            &self.books,
            &self.owned,
            self.next_age,
        ))
        .expect("encoding cannot fail");
        h.update(blake3::hash(&small).as_bytes());
        let ready = self.digests.ready;
        hash_entries(
            &mut h,
            &self.offers,
            ready.then_some(&self.digests.offers),
            OFFER_TAG,
        );
        hash_entries(
            &mut h,
            &self.lines,
            ready.then_some(&self.digests.lines),
            LINE_TAG,
        );
        *h.finalize().as_bytes()
    }
}

/// Offer options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferFlags {
    /// Immediate or cancel: take what crosses now, leave nothing in the book.
    pub ioc: bool,
    /// Fill or kill: fill entirely now or fail.
    pub fok: bool,
    /// Sell all of what is offered, even for more than asked.
    pub sell: bool,
    /// Do not take offers at exactly this offer's rate.
    pub passive: bool,
}

/// One offer taken (partly or entirely) by a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub offer: OfferId,
    /// What the offer's owner received.
    pub paid: Amount,
    /// What the offer's owner gave.
    pub got: Amount,
}

/// What a market transaction did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    TrustSet {
        issue: Issue,
        limit: u128,
        removed: bool,
    },
    IssuerSet(IssuerSettings),
    Authorized {
        holder: Account,
        issue: Issue,
    },
    Paid {
        to: Account,
        delivered: Amount,
        spent: Amount,
        fills: Vec<Fill>,
    },
    OfferPlaced {
        id: OfferId,
        fills: Vec<Fill>,
        /// What the offer paid and got while crossing.
        paid: Amount,
        got: Amount,
        /// What rests in the book (sells this much at `rate`), if anything.
        resting: Option<Amount>,
        rate: Rate,
    },
    OfferCancelled {
        id: OfferId,
    },
    /// Included, fee charged, nothing else changed.
    Failed {
        error: MarketError,
    },
}

/// Why a market transaction is refused (checks before inclusion) or failed (at execution).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MarketError {
    #[error("amount {0} is zero, out of range or has an invalid currency code")]
    BadAmount(String),
    #[error("an account cannot trust itself")]
    SelfTrust,
    #[error("an offer must sell one currency for another")]
    SameCurrency,
    #[error(
        "a payment in another currency than it delivers needs --send-max in the currency to spend"
    )]
    NeedsSendMax,
    #[error("transfer fee {0} ppm is over 100 % ({MAX_TRANSFER_FEE_PPM} ppm)")]
    FeeTooHigh(u32),
    #[error("fill-or-kill and immediate-or-cancel together make no sense")]
    Flags,
    #[error("{holder} has no trust line for {issue}")]
    NoLine { holder: Account, issue: Issue },
    #[error("{holder}'s line for {issue} is not authorised by its issuer")]
    NotAuthorized { holder: Account, issue: Issue },
    #[error("the limit cannot be set below the line's balance {balance}")]
    LimitBelowBalance { balance: String },
    #[error("{amount} would put {holder} over its trust line limit")]
    OverLimit { holder: Account, amount: String },
    #[error("insufficient funds: {holder} can spend {available} of {needed} needed")]
    Unfunded {
        holder: Account,
        available: String,
        needed: String,
    },
    #[error("the reserve: {owned} objects need {needed} AGR held back; the balance is {balance}")]
    Reserve {
        owned: u32,
        needed: u64,
        balance: u64,
    },
    #[error(
        "no path through the books delivers the amount within --send-max (delivered {delivered})"
    )]
    PathDry { delivered: String },
    #[error("fill-or-kill offer could not fill entirely")]
    Killed,
    #[error("no offer {seq} of this account")]
    NoSuchOffer { seq: u64 },
    #[error("only {0}'s issuer authorises its lines")]
    NotIssuer(Issue),
    #[error("an amount overflowed")]
    Overflow,
    #[error("invariant violated: {0}")]
    Invariant(String),
}

/// What an account asks of the market (carried in [`crate::tx::Action`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarketAction {
    TrustSet {
        issue: Issue,
        limit: u128,
    },
    IssuerSet {
        require_auth: Option<bool>,
        transfer_fee_ppm: Option<u32>,
    },
    Authorize {
        holder: Account,
        code: crate::amount::Code,
    },
    Pay {
        to: Account,
        deliver: Amount,
        send_max: Option<Amount>,
        partial: bool,
    },
    OfferCreate {
        sell: Amount,
        buy: Amount,
        flags: OfferFlags,
    },
    OfferCancel {
        seq: u64,
    },
}

impl MarketAction {
    /// Checks that need no state: amounts in range, codes valid, flags coherent.
    pub fn check_static(&self, from: &Account) -> Result<(), MarketError> {
        let amount_ok = |a: &Amount| {
            if a.value == 0 || !a.is_valid() {
                Err(MarketError::BadAmount(a.to_string()))
            } else {
                Ok(())
            }
        };
        match self {
            MarketAction::TrustSet { issue, limit } => {
                if issue.issuer == *from {
                    return Err(MarketError::SelfTrust);
                }
                if !issue.code.is_valid() || *limit > crate::amount::MAX_IOU {
                    return Err(MarketError::BadAmount(format!("{limit} of {issue}")));
                }
            }
            MarketAction::IssuerSet {
                transfer_fee_ppm, ..
            } => {
                if let Some(f) = transfer_fee_ppm
                    && *f > MAX_TRANSFER_FEE_PPM
                {
                    return Err(MarketError::FeeTooHigh(*f));
                }
            }
            MarketAction::Authorize { holder, code } => {
                if !code.is_valid() {
                    return Err(MarketError::BadAmount(code.to_string()));
                }
                if holder == from {
                    return Err(MarketError::SelfTrust);
                }
            }
            MarketAction::Pay {
                to,
                deliver,
                send_max,
                ..
            } => {
                amount_ok(deliver)?;
                if let Some(m) = send_max {
                    amount_ok(m)?;
                }
                if to == from && send_max.is_none_or(|m| m.currency == deliver.currency) {
                    return Err(MarketError::SameCurrency);
                }
            }
            MarketAction::OfferCreate { sell, buy, flags } => {
                amount_ok(sell)?;
                amount_ok(buy)?;
                if sell.currency == buy.currency {
                    return Err(MarketError::SameCurrency);
                }
                if flags.ioc && flags.fok {
                    return Err(MarketError::Flags);
                }
                if Rate::ratio_up(buy.value, sell.value).is_none() {
                    return Err(MarketError::BadAmount(format!("{buy} for {sell}")));
                }
            }
            MarketAction::OfferCancel { .. } => {}
        }
        Ok(())
    }
}

/// The previous value of something a transaction changed.
enum Undo {
    Account(Account, Option<AccountState>),
    Line((Account, Issue), Option<Line>),
    Obligation(Issue, Option<u128>),
    Issuer(Account, Option<IssuerSettings>),
    Offer(OfferId, Option<Offer>),
    Book(BookKey, bool),
    Owned(Account, Option<u32>),
    NextAge(u64),
    Burned(u64),
}

/// A market transaction in progress: every change goes through it and can be undone.
pub(crate) struct Txn<'a> {
    st: &'a mut State,
    undo: Vec<Undo>,
    fills: Vec<Fill>,
    touched: usize,
}

/// One book of a path: offers selling `sells`, buying `buys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Book {
    sells: Currency,
    buys: Currency,
}

/// The best usable offer of a book, with how much of it can move now.
#[derive(Clone, Copy, Debug)]
struct Top {
    id: OfferId,
    rate: Rate,
    /// Most of `sells` the offer can deliver now (remaining, funded, owner's room).
    cap: u128,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(st: &'a mut State) -> Self {
        Txn {
            st,
            undo: Vec::new(),
            fills: Vec::new(),
            touched: 0,
        }
    }

    // ---- recorded changes ----

    fn set_account(&mut self, a: Account, v: AccountState) {
        let prev = self.st.accounts.insert(a, v);
        self.undo.push(Undo::Account(a, prev));
    }

    fn set_line(&mut self, k: (Account, Issue), v: Option<Line>) {
        let prev = self.st.market.put_line(k, v);
        self.undo.push(Undo::Line(k, prev));
    }

    fn set_obligation(&mut self, i: Issue, v: u128) {
        let prev = if v == 0 {
            self.st.market.obligations.remove(&i)
        } else {
            self.st.market.obligations.insert(i, v)
        };
        self.undo.push(Undo::Obligation(i, prev));
    }

    fn set_issuer(&mut self, a: Account, v: IssuerSettings) {
        let prev = self.st.market.issuers.insert(a, v);
        self.undo.push(Undo::Issuer(a, prev));
    }

    fn set_offer(&mut self, id: OfferId, v: Option<Offer>) {
        let prev = self.st.market.put_offer(id, v);
        self.undo.push(Undo::Offer(id, prev));
    }

    fn set_book(&mut self, k: BookKey, present: bool) {
        let was = if present {
            !self.st.market.books.insert(k)
        } else {
            self.st.market.books.remove(&k)
        };
        self.undo.push(Undo::Book(k, was));
    }

    fn add_owned(&mut self, a: Account, delta: i32) {
        let cur = self.st.market.owned.get(&a).copied();
        let next = (cur.unwrap_or(0) as i64 + delta as i64).max(0) as u32;
        if next == 0 {
            self.st.market.owned.remove(&a);
        } else {
            self.st.market.owned.insert(a, next);
        }
        self.undo.push(Undo::Owned(a, cur));
    }

    fn next_age(&mut self) -> u64 {
        let age = self.st.market.next_age;
        self.undo.push(Undo::NextAge(age));
        self.st.market.next_age = age + 1;
        age
    }

    /// Charges the fee and takes the sequence number: what every included transaction does.
    pub(crate) fn charge(&mut self, from: Account, fee: u64) {
        let mut a = self.st.account(&from);
        a.balance -= fee;
        a.seq += 1;
        self.set_account(from, a);
        self.undo.push(Undo::Burned(self.st.burned));
        self.st.burned += fee;
    }

    /// Undoes everything since `mark` (an index into the undo log).
    fn rollback_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            match self.undo.pop().expect("len > mark") {
                Undo::Account(a, prev) => match prev {
                    Some(v) => {
                        self.st.accounts.insert(a, v);
                    }
                    None => {
                        self.st.accounts.remove(&a);
                    }
                },
                Undo::Line(k, prev) => {
                    self.st.market.put_line(k, prev);
                }
                Undo::Obligation(i, prev) => match prev {
                    Some(v) => {
                        self.st.market.obligations.insert(i, v);
                    }
                    None => {
                        self.st.market.obligations.remove(&i);
                    }
                },
                Undo::Issuer(a, prev) => match prev {
                    Some(v) => {
                        self.st.market.issuers.insert(a, v);
                    }
                    None => {
                        self.st.market.issuers.remove(&a);
                    }
                },
                Undo::Offer(id, prev) => {
                    self.st.market.put_offer(id, prev);
                }
                Undo::Book(k, was) => {
                    if was {
                        self.st.market.books.insert(k);
                    } else {
                        self.st.market.books.remove(&k);
                    }
                }
                Undo::Owned(a, prev) => match prev {
                    Some(v) => {
                        self.st.market.owned.insert(a, v);
                    }
                    None => {
                        self.st.market.owned.remove(&a);
                    }
                },
                Undo::NextAge(v) => self.st.market.next_age = v,
                Undo::Burned(v) => self.st.burned = v,
            }
        }
    }

    // ---- funds ----

    fn settings(&self, issuer: &Account) -> IssuerSettings {
        self.st
            .market
            .issuers
            .get(issuer)
            .copied()
            .unwrap_or_default()
    }

    /// AGR held back for what `a` owns.
    fn reserve(&self, a: &Account) -> u64 {
        let owned = self.st.market.owned.get(a).copied().unwrap_or(0) as u64;
        owned.saturating_mul(self.st.owner_reserve)
    }

    /// How much of `cur` `a` can send (before any transfer fee).
    fn spendable(&self, a: &Account, cur: &Currency) -> u128 {
        match cur {
            Currency::Native => self.st.account(a).balance.saturating_sub(self.reserve(a)) as u128,
            Currency::Issued(i) if i.issuer == *a => crate::amount::MAX_IOU,
            Currency::Issued(i) => self
                .st
                .market
                .lines
                .get(&(*a, *i))
                .filter(|l| l.authorized)
                .map_or(0, |l| l.balance),
        }
    }

    /// How much of `cur` `a` can receive.
    fn room(&self, a: &Account, cur: &Currency) -> u128 {
        match cur {
            Currency::Native => (u64::MAX - self.st.account(a).balance) as u128,
            Currency::Issued(i) if i.issuer == *a => crate::amount::MAX_IOU,
            Currency::Issued(i) => self
                .st
                .market
                .lines
                .get(&(*a, *i))
                .filter(|l| l.authorized)
                .map_or(0, |l| l.limit.saturating_sub(l.balance)),
        }
    }

    /// What sending `amount` of `cur` from `from` to `to` costs `from`: the amount and, between
    /// two holders, the issuer's transfer fee (rounded up).
    fn cost(&self, from: &Account, to: &Account, cur: &Currency, amount: u128) -> Option<u128> {
        match cur {
            Currency::Issued(i) if i.issuer != *from && i.issuer != *to => {
                let ppm = self.settings(&i.issuer).transfer_fee_ppm as u128;
                let fee = amount.checked_mul(ppm)?.div_ceil(1_000_000);
                amount.checked_add(fee)
            }
            _ => Some(amount),
        }
    }

    /// The most `from` can deliver to `to` given what it can spend (the fee included).
    fn deliverable(&self, from: &Account, to: &Account, cur: &Currency) -> u128 {
        let have = self.spendable(from, cur);
        match cur {
            Currency::Issued(i) if i.issuer != *from && i.issuer != *to => {
                let ppm = self.settings(&i.issuer).transfer_fee_ppm as u128;
                if ppm == 0 {
                    return have;
                }
                // x + ceil(x ppm / 10^6) <= have
                let mut x = have.saturating_mul(1_000_000) / (1_000_000 + ppm);
                while x > 0 && self.cost(from, to, cur, x).is_none_or(|c| c > have) {
                    x -= 1;
                }
                x
            }
            _ => have,
        }
    }

    /// Moves `amount` of `cur` from `from` to `to`, checking funds and the receiver's room.
    fn send(
        &mut self,
        from: Account,
        to: Account,
        cur: Currency,
        amount: u128,
    ) -> Result<(), MarketError> {
        if amount == 0 || from == to {
            return Ok(());
        }
        let cost = self
            .cost(&from, &to, &cur, amount)
            .ok_or(MarketError::Overflow)?;
        let available = self.spendable(&from, &cur);
        if cost > available {
            return Err(MarketError::Unfunded {
                holder: from,
                available: Amount {
                    currency: cur,
                    value: available,
                }
                .to_string(),
                needed: Amount {
                    currency: cur,
                    value: cost,
                }
                .to_string(),
            });
        }
        if amount > self.room(&to, &cur) {
            let issue = match cur {
                Currency::Issued(i) => i,
                Currency::Native => return Err(MarketError::Overflow),
            };
            return Err(match self.st.market.lines.get(&(to, issue)) {
                None => MarketError::NoLine { holder: to, issue },
                Some(l) if !l.authorized => MarketError::NotAuthorized { holder: to, issue },
                Some(_) => MarketError::OverLimit {
                    holder: to,
                    amount: Amount {
                        currency: cur,
                        value: amount,
                    }
                    .to_string(),
                },
            });
        }
        match cur {
            Currency::Native => {
                let (amount, cost) = (amount as u64, cost as u64);
                let mut f = self.st.account(&from);
                f.balance -= cost;
                self.set_account(from, f);
                let mut t = self.st.account(&to);
                t.balance += amount;
                self.set_account(to, t);
            }
            Currency::Issued(i) => {
                let mut owed = self.st.market.obligations.get(&i).copied().unwrap_or(0);
                if from != i.issuer {
                    let mut l = self.st.market.lines[&(from, i)];
                    l.balance -= cost;
                    self.set_line((from, i), Some(l));
                    owed -= cost;
                }
                if to != i.issuer {
                    let mut l = self.st.market.lines[&(to, i)];
                    l.balance += amount;
                    self.set_line((to, i), Some(l));
                    owed = owed.checked_add(amount).ok_or(MarketError::Overflow)?;
                }
                self.set_obligation(i, owed);
            }
        }
        Ok(())
    }

    fn check_reserve(&self, a: &Account, extra: u32) -> Result<(), MarketError> {
        let owned = self.st.market.owned.get(a).copied().unwrap_or(0) + extra;
        let needed = (owned as u64).saturating_mul(self.st.owner_reserve);
        let balance = self.st.account(a).balance;
        if balance < needed {
            return Err(MarketError::Reserve {
                owned,
                needed,
                balance,
            });
        }
        Ok(())
    }

    // ---- trust lines and issuer settings ----

    fn trust_set(
        &mut self,
        from: Account,
        issue: Issue,
        limit: u128,
    ) -> Result<Outcome, MarketError> {
        let key = (from, issue);
        match self.st.market.lines.get(&key).copied() {
            None => {
                if limit == 0 {
                    return Ok(Outcome::TrustSet {
                        issue,
                        limit,
                        removed: true,
                    });
                }
                self.check_reserve(&from, 1)?;
                let authorized = !self.settings(&issue.issuer).require_auth;
                self.set_line(
                    key,
                    Some(Line {
                        balance: 0,
                        limit,
                        authorized,
                    }),
                );
                self.add_owned(from, 1);
                Ok(Outcome::TrustSet {
                    issue,
                    limit,
                    removed: false,
                })
            }
            Some(line) => {
                if limit < line.balance {
                    return Err(MarketError::LimitBelowBalance {
                        balance: crate::amount::format_units(line.balance),
                    });
                }
                let removed = limit == 0 && line.balance == 0;
                if removed {
                    self.set_line(key, None);
                    self.add_owned(from, -1);
                } else {
                    self.set_line(key, Some(Line { limit, ..line }));
                }
                Ok(Outcome::TrustSet {
                    issue,
                    limit,
                    removed,
                })
            }
        }
    }

    fn authorize(
        &mut self,
        issuer: Account,
        holder: Account,
        code: crate::amount::Code,
    ) -> Result<Outcome, MarketError> {
        let issue = Issue { code, issuer };
        let key = (holder, issue);
        let line = self
            .st
            .market
            .lines
            .get(&key)
            .copied()
            .ok_or(MarketError::NoLine { holder, issue })?;
        self.set_line(
            key,
            Some(Line {
                authorized: true,
                ..line
            }),
        );
        Ok(Outcome::Authorized { holder, issue })
    }

    // ---- books ----

    /// The best offer of `book` that can move something now, removing the unusable ones it
    /// passes (unfunded owner, owner without room for what it buys). `taker`'s own offers are
    /// skipped, not taken. `None` when the book is empty or the work bound is reached.
    fn top(&mut self, book: Book, taker: &Account, deliver_to: Option<&Account>) -> Option<Top> {
        let lo = BookKey {
            sells: book.sells,
            buys: book.buys,
            rate: Rate::MIN,
            age: 0,
            id: OfferId {
                owner: Account([0; 32]),
                seq: 0,
            },
        };
        let mut skip_own = 0usize;
        loop {
            if self.touched >= MAX_OFFERS_TOUCHED {
                return None;
            }
            let key = *self
                .st
                .market
                .books
                .range(lo..)
                .nth(skip_own)
                .filter(|k| k.sells == book.sells && k.buys == book.buys)?;
            let owner = key.id.owner;
            if owner == *taker {
                skip_own += 1;
                continue;
            }
            let offer = self.st.market.offers[&key.id];
            // What the owner can deliver: to the next owner or the recipient, which the caller
            // does not know yet; the issuer's fee applies unless one side is the issuer, so the
            // funding is computed for a holder-to-holder move, the most it can cost.
            let to = deliver_to.copied().unwrap_or(Account([0xff; 32]));
            let funded = self.deliverable(&owner, &to, &book.sells);
            let room = self.room(&owner, &book.buys);
            let by_room = offer.rate.div_down(room);
            let cap = offer.remaining.min(funded).min(by_room);
            if cap == 0 || offer.rate.mul_up(cap).is_none_or(|p| p == 0) {
                self.touched += 1;
                self.remove_offer(key.id);
                continue;
            }
            return Some(Top {
                id: key.id,
                rate: offer.rate,
                cap,
            });
        }
    }

    fn remove_offer(&mut self, id: OfferId) {
        if let Some(o) = self.st.market.offers.get(&id).copied() {
            self.set_offer(id, None);
            self.set_book(
                BookKey {
                    sells: o.sells,
                    buys: o.buys,
                    rate: o.rate,
                    age: o.age,
                    id,
                },
                false,
            );
            self.add_owned(id.owner, -1);
        }
    }

    /// Takes `got` of offer `id`'s currency, which its owner delivers to `receiver`, for `paid`
    /// of what it buys (already paid to the owner by the caller).
    fn fill(
        &mut self,
        id: OfferId,
        receiver: Account,
        paid: u128,
        got: u128,
    ) -> Result<(), MarketError> {
        let offer = self.st.market.offers[&id];
        // Never worse than the offer's own rate for its owner.
        if offer.rate.mul_up(got).is_none_or(|needed| paid < needed) {
            return Err(MarketError::Invariant(format!(
                "offer {}/{} filled below its rate",
                id.owner, id.seq
            )));
        }
        self.send(id.owner, receiver, offer.sells, got)?;
        self.touched += 1;
        let left = offer.remaining - got;
        if left == 0 {
            self.remove_offer(id);
        } else {
            self.set_offer(
                id,
                Some(Offer {
                    remaining: left,
                    ..offer
                }),
            );
        }
        self.fills.push(Fill {
            offer: id,
            paid: Amount {
                currency: offer.buys,
                value: paid,
            },
            got: Amount {
                currency: offer.sells,
                value: got,
            },
        });
        Ok(())
    }

    /// The paths from `src` to `dst` (currency lists), bounded and in a fixed order.
    fn paths(&self, src: Currency, dst: Currency, with_middles: bool) -> Vec<Vec<Currency>> {
        let mut out = vec![vec![src, dst]];
        if src != Currency::Native && dst != Currency::Native {
            out.push(vec![src, Currency::Native, dst]);
        }
        if with_middles {
            // Currencies `src` has a book into: offers selling them for `src`.
            let mut middles: Vec<Currency> = Vec::new();
            for (sells, buys) in self.st.pairs() {
                if middles.len() >= MAX_MIDDLES {
                    break;
                }
                if buys == src && sells != dst && sells != Currency::Native {
                    middles.push(sells);
                }
            }
            for m in middles {
                out.push(vec![src, m, dst]);
                if dst != Currency::Native {
                    out.push(vec![src, m, Currency::Native, dst]);
                }
            }
        }
        out
    }

    /// Moves value along the books from `taker` (paying `src`) to `recipient` (receiving
    /// `dst`), step by step on the best path, until `want_out` is delivered, `max_in` is spent,
    /// the paths run dry, or the combined rate would pass `limit` (`src` per `dst`; `strict`:
    /// must be better than it). Returns (spent, delivered).
    #[allow(clippy::too_many_arguments)]
    fn flow(
        &mut self,
        taker: Account,
        recipient: Account,
        paths: &[Vec<Currency>],
        want_out: Option<u128>,
        max_in: u128,
        limit: Option<(Rate, bool)>,
    ) -> Result<(u128, u128), MarketError> {
        let (mut spent, mut delivered) = (0u128, 0u128);
        loop {
            let out_left = want_out.map(|w| w - delivered);
            let in_left = max_in - spent;
            if out_left == Some(0) || in_left == 0 {
                break;
            }
            // The best path now.
            let mut best: Option<(Rate, Vec<(Book, Top)>)> = None;
            for path in paths {
                let mut tops = Vec::with_capacity(path.len() - 1);
                let mut rate: Option<Rate> = None;
                let n = path.len() - 1;
                for i in 0..n {
                    let book = Book {
                        sells: path[i + 1],
                        buys: path[i],
                    };
                    let to = (i + 1 == n).then_some(&recipient);
                    let Some(top) = self.top(book, &taker, to) else {
                        break;
                    };
                    rate = match rate {
                        None => Some(top.rate),
                        Some(r) => r.then(&top.rate),
                    };
                    tops.push((book, top));
                }
                let (Some(rate), true) = (rate, tops.len() == n) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(r, _)| rate < *r) {
                    best = Some((rate, tops));
                }
            }
            let Some((rate, tops)) = best else { break };
            if let Some((lim, strict)) = limit
                && (rate > lim || (strict && rate == lim))
            {
                break;
            }
            // Amounts through the path: the most the top offers, the input left and the
            // output wanted allow. Backwards from the output, each owner asks its rate of what
            // it delivers (rounded up); where a bound binds, forwards from it (rounded down)
            // gives a smaller output to try again.
            let n = tops.len();
            let mut out = out_left.unwrap_or(u128::MAX).min(tops[n - 1].1.cap);
            let mut tries = 0;
            let ins = loop {
                let mut need = out;
                let mut ins = vec![0u128; n];
                let mut bound = None;
                for i in (0..n).rev() {
                    let top = tops[i].1;
                    if need > top.cap {
                        bound = Some(i);
                        break;
                    }
                    need = top.rate.mul_up(need).ok_or(MarketError::Overflow)?;
                    ins[i] = need;
                }
                if bound.is_none() && need > in_left {
                    bound = Some(n);
                }
                let Some(b) = bound else { break Some(ins) };
                let (mut amount, from) = if b == n {
                    (in_left, 0)
                } else {
                    (tops[b].1.cap, b + 1)
                };
                if b == n {
                    amount = tops[0].1.rate.div_down(amount).min(tops[0].1.cap);
                }
                for (_, top) in &tops[from.max(1)..] {
                    amount = top.rate.div_down(amount).min(top.cap);
                }
                tries += 1;
                let next = if amount < out { amount } else { out - 1 };
                if next == 0 || tries > 16 {
                    break None;
                }
                out = next;
            };
            // Nothing whole moves (the input left buys less than an atom): done.
            let Some(ins) = ins else { break };
            // Execute: the taker pays the first owner; each owner delivers to the next, the
            // last to the recipient.
            let c0 = self.st.market.offers[&tops[0].1.id].buys;
            self.send(taker, tops[0].1.id.owner, c0, ins[0])?;
            for i in 0..n {
                let receiver = if i + 1 == n {
                    recipient
                } else {
                    tops[i + 1].1.id.owner
                };
                let got = if i + 1 == n { out } else { ins[i + 1] };
                self.fill(tops[i].1.id, receiver, ins[i], got)?;
            }
            spent += ins[0];
            delivered += out;
            if self.touched >= MAX_OFFERS_TOUCHED {
                break;
            }
        }
        Ok((spent, delivered))
    }

    // ---- payments ----

    fn pay(
        &mut self,
        from: Account,
        to: Account,
        deliver: Amount,
        send_max: Option<Amount>,
        partial: bool,
    ) -> Result<Outcome, MarketError> {
        let src = send_max.map_or(deliver.currency, |m| m.currency);
        if src == deliver.currency {
            // Directly, through the issuer: no books.
            let cost = self
                .cost(&from, &to, &deliver.currency, deliver.value)
                .ok_or(MarketError::Overflow)?;
            if let Some(m) = send_max
                && cost > m.value
            {
                return Err(MarketError::PathDry {
                    delivered: "0".into(),
                });
            }
            self.send(from, to, deliver.currency, deliver.value)?;
            return Ok(Outcome::Paid {
                to,
                delivered: deliver,
                spent: Amount {
                    currency: src,
                    value: cost,
                },
                fills: Vec::new(),
            });
        }
        let max_in = send_max.ok_or(MarketError::NeedsSendMax)?.value;
        let want = deliver.value.min(self.room(&to, &deliver.currency));
        if want < deliver.value && !partial {
            // Say why: no line, unauthorised, or over the limit.
            self.send_check_room(to, deliver)?;
        }
        // What the sender can pay for the first book (its balance of `src`; the fee to the
        // first owner is charged by `send`).
        let max_in = max_in.min(self.deliverable(&from, &Account([0xff; 32]), &src));
        let paths = self.paths(src, deliver.currency, true);
        let (spent, delivered) = self.flow(from, to, &paths, Some(want), max_in, None)?;
        if delivered == 0 || (!partial && delivered < deliver.value) {
            return Err(MarketError::PathDry {
                delivered: Amount {
                    currency: deliver.currency,
                    value: delivered,
                }
                .to_string(),
            });
        }
        Ok(Outcome::Paid {
            to,
            delivered: Amount {
                currency: deliver.currency,
                value: delivered,
            },
            spent: Amount {
                currency: src,
                value: spent,
            },
            fills: std::mem::take(&mut self.fills),
        })
    }

    fn send_check_room(&self, to: Account, a: Amount) -> Result<(), MarketError> {
        let Currency::Issued(issue) = a.currency else {
            return Err(MarketError::Overflow);
        };
        Err(match self.st.market.lines.get(&(to, issue)) {
            None => MarketError::NoLine { holder: to, issue },
            Some(l) if !l.authorized => MarketError::NotAuthorized { holder: to, issue },
            Some(_) => MarketError::OverLimit {
                holder: to,
                amount: a.to_string(),
            },
        })
    }

    // ---- offers ----

    fn offer_create(
        &mut self,
        from: Account,
        seq: u64,
        sell: Amount,
        buy: Amount,
        flags: OfferFlags,
    ) -> Result<Outcome, MarketError> {
        let rate = Rate::ratio_up(buy.value, sell.value)
            .ok_or_else(|| MarketError::BadAmount(format!("{buy} for {sell}")))?;
        // The owner must be able to receive what it buys.
        if self.room(&from, &buy.currency) == 0 {
            return Err(match buy.currency {
                Currency::Issued(issue) => match self.st.market.lines.get(&(from, issue)) {
                    None => MarketError::NoLine {
                        holder: from,
                        issue,
                    },
                    Some(l) if !l.authorized => MarketError::NotAuthorized {
                        holder: from,
                        issue,
                    },
                    Some(_) => MarketError::OverLimit {
                        holder: from,
                        amount: buy.to_string(),
                    },
                },
                Currency::Native => MarketError::Overflow,
            });
        }
        let have = self.deliverable(&from, &Account([0xff; 32]), &sell.currency);
        if have == 0 {
            return Err(MarketError::Unfunded {
                holder: from,
                available: "0".into(),
                needed: sell.to_string(),
            });
        }
        // Cross: the taker pays `sell`'s currency and receives `buy`'s, at most the inverse of
        // its own rate (sell per buy, rounded down: never pay more than asked).
        let limit = Rate::ratio_down(sell.value, buy.value)
            .ok_or_else(|| MarketError::BadAmount(format!("{sell} for {buy}")))?;
        let paths = self.paths(sell.currency, buy.currency, false);
        let want_out = (!flags.sell).then_some(buy.value);
        let max_in = sell.value.min(have);
        let (paid, got) = self.flow(
            from,
            from,
            &paths,
            want_out,
            max_in,
            Some((limit, flags.passive)),
        )?;
        let filled = if flags.sell {
            paid >= sell.value
        } else {
            got >= buy.value
        };
        if flags.fok && !filled {
            return Err(MarketError::Killed);
        }
        let id = OfferId { owner: from, seq };
        let mut resting = None;
        if !filled && !flags.ioc && !flags.fok {
            let left = sell.value - paid.min(sell.value);
            if left > 0 {
                self.check_reserve(&from, 1)?;
                let age = self.next_age();
                let offer = Offer {
                    sells: sell.currency,
                    buys: buy.currency,
                    remaining: left,
                    rate,
                    age,
                };
                self.set_offer(id, Some(offer));
                self.set_book(
                    BookKey {
                        sells: sell.currency,
                        buys: buy.currency,
                        rate,
                        age,
                        id,
                    },
                    true,
                );
                self.add_owned(from, 1);
                resting = Some(Amount {
                    currency: sell.currency,
                    value: left,
                });
            }
        }
        Ok(Outcome::OfferPlaced {
            id,
            fills: std::mem::take(&mut self.fills),
            paid: Amount {
                currency: sell.currency,
                value: paid,
            },
            got: Amount {
                currency: buy.currency,
                value: got,
            },
            resting,
            rate,
        })
    }

    // ---- the whole transaction ----

    /// Carries out `action` (fee and sequence already charged), then checks the invariants
    /// over everything it changed. On an error everything since the charge is undone.
    pub(crate) fn run(&mut self, from: Account, seq: u64, action: &MarketAction) -> Outcome {
        let mark = self.undo.len();
        let result = match action {
            MarketAction::TrustSet { issue, limit } => self.trust_set(from, *issue, *limit),
            MarketAction::IssuerSet {
                require_auth,
                transfer_fee_ppm,
            } => {
                let mut s = self.settings(&from);
                if let Some(r) = require_auth {
                    s.require_auth = *r;
                }
                if let Some(f) = transfer_fee_ppm {
                    s.transfer_fee_ppm = *f;
                }
                self.set_issuer(from, s);
                Ok(Outcome::IssuerSet(s))
            }
            MarketAction::Authorize { holder, code } => self.authorize(from, *holder, *code),
            MarketAction::Pay {
                to,
                deliver,
                send_max,
                partial,
            } => self.pay(from, *to, *deliver, *send_max, *partial),
            MarketAction::OfferCreate { sell, buy, flags } => {
                self.offer_create(from, seq, *sell, *buy, *flags)
            }
            MarketAction::OfferCancel { seq } => {
                let id = OfferId {
                    owner: from,
                    seq: *seq,
                };
                if self.st.market.offers.contains_key(&id) {
                    self.remove_offer(id);
                    Ok(Outcome::OfferCancelled { id })
                } else {
                    Err(MarketError::NoSuchOffer { seq: *seq })
                }
            }
        };
        let result = result.and_then(|o| self.check_invariants(mark).map(|()| o));
        match result {
            Ok(o) => o,
            Err(error) => {
                self.rollback_to(mark);
                self.fills.clear();
                Outcome::Failed { error }
            }
        }
    }

    /// Checks what changed since `mark`: conservation of every currency, lines within their
    /// limits, owner counts matching what exists.
    pub(crate) fn check_invariants(&self, mark: usize) -> Result<(), MarketError> {
        let mut native: i128 = 0;
        let mut issued: BTreeMap<Issue, i128> = BTreeMap::new();
        let mut seen_accounts = BTreeSet::new();
        let mut seen_lines = BTreeSet::new();
        let mut seen_owed = BTreeSet::new();
        let mut burned_before = None;
        for u in &self.undo[mark..] {
            match u {
                Undo::Account(a, prev) if seen_accounts.insert(*a) => {
                    let before = prev.map_or(0, |p| p.balance) as i128;
                    native += self.st.account(a).balance as i128 - before;
                }
                Undo::Line(k, prev) if seen_lines.insert(*k) => {
                    let before = prev.map_or(0, |l| l.balance) as i128;
                    let now = self.st.market.lines.get(k);
                    if let Some(l) = now
                        && l.balance > l.limit
                    {
                        return Err(MarketError::Invariant(format!(
                            "{}'s line for {} is above its limit",
                            k.0, k.1
                        )));
                    }
                    *issued.entry(k.1).or_default() +=
                        now.map_or(0, |l| l.balance) as i128 - before;
                }
                Undo::Obligation(i, prev) if seen_owed.insert(*i) => {
                    let before = prev.unwrap_or(0) as i128;
                    let now = self.st.market.obligations.get(i).copied().unwrap_or(0) as i128;
                    *issued.entry(*i).or_default() -= now - before;
                }
                Undo::Burned(b) if burned_before.is_none() => burned_before = Some(*b),
                _ => {}
            }
        }
        let burned = burned_before.map_or(0, |b| self.st.burned as i128 - b as i128);
        if native + burned != 0 {
            return Err(MarketError::Invariant(format!(
                "AGR not conserved: balances moved {native}, burned {burned}"
            )));
        }
        if let Some((i, d)) = issued.iter().find(|(_, d)| **d != 0) {
            return Err(MarketError::Invariant(format!(
                "{i} not conserved: holders and obligations differ by {d}"
            )));
        }
        Ok(())
    }

    /// Discards the undo log (the transaction is committed).
    pub(crate) fn commit(self) {}
}

impl State {
    /// The (sells, buys) pairs that have offers, in key order: one range lookup per pair.
    pub fn pairs(&self) -> impl Iterator<Item = (Currency, Currency)> + '_ {
        let mut after: Option<(Currency, Currency)> = None;
        std::iter::from_fn(move || {
            let next = match after {
                None => self.market.books.iter().next(),
                Some((sells, buys)) => {
                    let end = BookKey {
                        sells,
                        buys,
                        rate: Rate::MAX,
                        age: u64::MAX,
                        id: OfferId {
                            owner: Account([0xff; 32]),
                            seq: u64::MAX,
                        },
                    };
                    self.market
                        .books
                        .range((std::ops::Bound::Excluded(end), std::ops::Bound::Unbounded))
                        .next()
                }
            }?;
            after = Some((next.sells, next.buys));
            after
        })
    }

    /// The holder's lines (as holder) and, for an issuer, what it owes per currency.
    pub fn lines_of(&self, holder: &Account) -> Vec<(Issue, Line)> {
        let first = Issue {
            code: crate::amount::Code::MIN,
            issuer: Account([0; 32]),
        };
        self.market
            .lines
            .range((*holder, first)..)
            .take_while(|((h, _), _)| h == holder)
            .map(|((_, i), l)| (*i, *l))
            .collect()
    }

    /// The lines an issuer has issued on: (holder, issue, line).
    pub fn lines_issued_by(&self, issuer: &Account) -> Vec<(Account, Issue, Line)> {
        self.market
            .lines
            .iter()
            .filter(|((_, i), _)| i.issuer == *issuer)
            .map(|((h, i), l)| (*h, *i, *l))
            .collect()
    }

    /// `owner`'s resting offers.
    pub fn offers_of(&self, owner: &Account) -> Vec<(OfferId, Offer)> {
        let lo = OfferId {
            owner: *owner,
            seq: 0,
        };
        self.market
            .offers
            .range(lo..)
            .take_while(|(id, _)| id.owner == *owner)
            .map(|(id, o)| (*id, *o))
            .collect()
    }

    /// The offers selling `sells` for `buys`, best first (at most `limit`).
    pub fn book(&self, sells: Currency, buys: Currency, limit: usize) -> Vec<(OfferId, Offer)> {
        self.market
            .books
            .range(
                BookKey {
                    sells,
                    buys,
                    rate: Rate::MIN,
                    age: 0,
                    id: OfferId {
                        owner: Account([0; 32]),
                        seq: 0,
                    },
                }..,
            )
            .take_while(|k| k.sells == sells && k.buys == buys)
            .take(limit)
            .map(|k| (k.id, self.market.offers[&k.id]))
            .collect()
    }

    /// Checks the whole market against itself (tests and proptests): every obligation equals
    /// the sum of its holders' balances, every line is within its limit, every offer is in its
    /// book and the other way round, and owner counts match.
    pub fn audit_market(&self) -> Result<(), String> {
        let mut sums: BTreeMap<Issue, u128> = BTreeMap::new();
        let mut owned: BTreeMap<Account, u32> = BTreeMap::new();
        for ((h, i), l) in &self.market.lines {
            if l.balance > l.limit {
                return Err(format!("{h}'s line for {i} is above its limit"));
            }
            *sums.entry(*i).or_default() += l.balance;
            *owned.entry(*h).or_default() += 1;
        }
        let owed: BTreeMap<Issue, u128> = self
            .market
            .obligations
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| (*k, *v))
            .collect();
        sums.retain(|_, v| *v > 0);
        if sums != owed {
            return Err(format!(
                "obligations {owed:?} differ from balances {sums:?}"
            ));
        }
        if self.market.books.len() != self.market.offers.len() {
            return Err("books and offers differ in number".into());
        }
        for k in &self.market.books {
            let o = self
                .market
                .offers
                .get(&k.id)
                .ok_or("a book entry without an offer")?;
            if (o.sells, o.buys, o.rate, o.age) != (k.sells, k.buys, k.rate, k.age) {
                return Err("a book entry differs from its offer".into());
            }
            if o.remaining == 0 {
                return Err("an empty offer rests".into());
            }
            *owned.entry(k.id.owner).or_default() += 1;
        }
        if owned != self.market.owned {
            return Err(format!(
                "owner counts {:?} differ from what exists {owned:?}",
                self.market.owned
            ));
        }
        Ok(())
    }
}
