//! Smart contracts in the ledger's state: deterministic WebAssembly run by every validator with
//! fuel as gas ([`agora_wasm::contract`]), code stored once by BLAKE3 hash, a key-value store
//! per contract in the state root.
//!
//! # Transactions
//! - `Deploy {code, init, gas}`: checks the module (imports from `agora` only, no start
//!   function, an exported memory), stores its code once, creates the contract account
//!   `BLAKE3("agora-ledger/contract/1" ‖ deployer ‖ sequence number)` and, when the module
//!   exports `init`, runs it with `init` as input; if `init` fails nothing is created.
//! - `Call {contract, method, input, value, gas}`: sends `value` AGR to the contract and runs
//!   the exported function `method`.
//!
//! # Gas and fees
//! Gas is what the engine counts (fuel plus host fees); a deploy also costs
//! [`DEPLOY_GAS`] plus [`CODE_BYTE_GAS`] per byte of new code. The fee is the minimum fee plus
//! one AGR base unit per [`GAS_PER_UNIT`] gas used (rounded up). The transaction's `fee` field
//! is the most the sender will pay: it must cover the minimum fee and the gas limit; only what
//! was used is charged — also when the call fails (revert, trap, out of gas), which then changes
//! nothing else.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use agora_wasm::contract::{self as engine, ContractEngine, Host};
use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::state::AccountState;
use crate::tx::Hash;

/// Gas per AGR base unit of fee.
pub const GAS_PER_UNIT: u64 = 10_000;
/// The most gas one transaction may use.
pub const MAX_GAS: u64 = 1_000_000_000;
/// Gas of a deploy, before the code and `init`.
pub const DEPLOY_GAS: u64 = 50_000;
/// Gas per byte of code stored (code already stored costs nothing).
pub const CODE_BYTE_GAS: u64 = 20;
/// Longest method name and input.
pub const MAX_METHOD: usize = 64;
pub const MAX_INPUT: usize = 8 * 1024;
/// Module and init input of a deploy together: what fits in a transaction with its envelope.
pub const MAX_DEPLOY_BYTES: usize = crate::tx::MAX_TX_BYTES - 512;

/// What an account asks of the contract engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContractAction {
    Deploy {
        code: Vec<u8>,
        init: Vec<u8>,
        gas: u64,
    },
    Call {
        contract: Account,
        method: String,
        input: Vec<u8>,
        value: u64,
        gas: u64,
    },
}

/// A deployed contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractInfo {
    pub code: Hash,
    pub creator: Account,
}

/// The contract part of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contracts {
    pub code: BTreeMap<Hash, Vec<u8>>,
    pub accounts: BTreeMap<Account, ContractInfo>,
    pub storage: BTreeMap<(Account, Vec<u8>), Vec<u8>>,
}

/// An event a contract emitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub contract: Account,
    pub topic: Vec<u8>,
    pub data: Vec<u8>,
}

/// What a deploy or a call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractOutcome {
    pub contract: Account,
    /// `None` when it succeeded; else what failed it (e.g. "out of gas").
    pub error: Option<String>,
    pub output: Vec<u8>,
    pub events: Vec<Event>,
    pub gas_used: u64,
}

/// Why a contract transaction is refused before inclusion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ContractError {
    #[error("the module is refused: {0}")]
    Module(String),
    #[error("gas limit {0} is zero or over {MAX_GAS}")]
    Gas(u64),
    #[error("method name or input too long")]
    TooLong,
    #[error("`init` runs only at deploy")]
    InitCall,
    #[error("the module and its init input are {0} bytes; a transaction holds at most {max}", max = MAX_DEPLOY_BYTES)]
    TooLarge(usize),
    #[error("the fee {fee} does not cover the minimum fee and the gas limit ({needed})")]
    FeeBelowGas { fee: u64, needed: u64 },
}

impl ContractAction {
    pub fn gas_limit(&self) -> u64 {
        match self {
            ContractAction::Deploy { gas, .. } | ContractAction::Call { gas, .. } => *gas,
        }
    }

    /// Checks that need no state.
    pub fn check_static(&self, fee: u64, min_fee: u64) -> Result<(), ContractError> {
        let gas = self.gas_limit();
        if gas == 0 || gas > MAX_GAS {
            return Err(ContractError::Gas(gas));
        }
        let needed = fee_for(min_fee, gas);
        if fee < needed {
            return Err(ContractError::FeeBelowGas { fee, needed });
        }
        match self {
            ContractAction::Deploy { code, init, .. } => {
                if init.len() > MAX_INPUT {
                    return Err(ContractError::TooLong);
                }
                if code.len() + init.len() > MAX_DEPLOY_BYTES {
                    return Err(ContractError::TooLarge(code.len() + init.len()));
                }
                engine::check_contract(code).map_err(|e| ContractError::Module(e.to_string()))
            }
            ContractAction::Call { method, input, .. } => {
                if method.len() > MAX_METHOD || input.len() > MAX_INPUT {
                    return Err(ContractError::TooLong);
                }
                if method == "init" {
                    return Err(ContractError::InitCall);
                }
                Ok(())
            }
        }
    }
}

/// The fee of `gas` gas: the minimum fee plus a base unit per [`GAS_PER_UNIT`] gas.
pub fn fee_for(min_fee: u64, gas: u64) -> u64 {
    min_fee.saturating_add(gas.div_ceil(GAS_PER_UNIT))
}

/// The address of the contract `deployer` creates with sequence number `seq`.
pub fn contract_address(deployer: &Account, seq: u64) -> Account {
    let mut h = blake3::Hasher::new();
    h.update(b"agora-ledger/contract/1");
    h.update(&deployer.0);
    h.update(&seq.to_le_bytes());
    Account(*h.finalize().as_bytes())
}

static ENGINE: OnceLock<ContractEngine> = OnceLock::new();
static CACHE_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Sets where compiled modules are cached (before the first contract runs; the node passes
/// its data directory's `contract-cache`). Later calls are ignored.
pub fn set_cache_dir(dir: std::path::PathBuf) {
    let _ = CACHE_DIR.set(dir);
}

/// The process's contract engine.
pub fn engine_handle() -> &'static ContractEngine {
    ENGINE.get_or_init(|| {
        let dir = CACHE_DIR
            .get()
            .cloned()
            .unwrap_or_else(|| std::env::temp_dir().join("agora-contract-cache"));
        ContractEngine::new(&dir)
            .or_else(|_| ContractEngine::new(std::env::temp_dir().join("agora-contract-cache")))
            .expect("a contract engine")
    })
}

enum Undo {
    Account(Account, Option<AccountState>),
    Storage((Account, Vec<u8>), Option<Vec<u8>>),
    Contract(Account, Option<ContractInfo>),
    Code(Hash),
}

/// The ledger's side of the host API: the state's accounts and contracts, moved in for the
/// run and moved back after, with an undo log for rollbacks.
pub(crate) struct LedgerHost {
    pub(crate) accounts: BTreeMap<Account, AccountState>,
    pub(crate) contracts: Contracts,
    undo: Vec<Undo>,
}

impl LedgerHost {
    pub(crate) fn new(
        accounts: BTreeMap<Account, AccountState>,
        contracts: Contracts,
    ) -> LedgerHost {
        LedgerHost {
            accounts,
            contracts,
            undo: Vec::new(),
        }
    }

    pub(crate) fn create(&mut self, address: Account, info: ContractInfo, code: Vec<u8>) -> bool {
        let new_code = !self.contracts.code.contains_key(&info.code);
        if new_code {
            self.contracts.code.insert(info.code, code);
            self.undo.push(Undo::Code(info.code));
        }
        let prev = self.contracts.accounts.insert(address, info);
        self.undo.push(Undo::Contract(address, prev));
        new_code
    }
}

impl Host for LedgerHost {
    fn get(&mut self, contract: &[u8; 32], key: &[u8]) -> Option<Vec<u8>> {
        self.contracts
            .storage
            .get(&(Account(*contract), key.to_vec()))
            .cloned()
    }

    fn put(&mut self, contract: &[u8; 32], key: &[u8], value: Option<&[u8]>) {
        let k = (Account(*contract), key.to_vec());
        let prev = match value {
            Some(v) => self.contracts.storage.insert(k.clone(), v.to_vec()),
            None => self.contracts.storage.remove(&k),
        };
        self.undo.push(Undo::Storage(k, prev));
    }

    fn balance(&mut self, account: &[u8; 32]) -> u64 {
        self.accounts
            .get(&Account(*account))
            .map_or(0, |a| a.balance)
    }

    fn transfer(&mut self, from: &[u8; 32], to: &[u8; 32], amount: u64) -> Result<(), String> {
        let (from, to) = (Account(*from), Account(*to));
        let f = self.accounts.get(&from).copied().unwrap_or_default();
        if f.balance < amount {
            return Err(format!("balance {} < {amount}", f.balance));
        }
        let t = self.accounts.get(&to).copied().unwrap_or_default();
        let Some(credited) = t.balance.checked_add(amount) else {
            return Err("the recipient's balance would overflow".into());
        };
        if from == to {
            return Ok(());
        }
        let prev = self.accounts.insert(
            from,
            AccountState {
                balance: f.balance - amount,
                ..f
            },
        );
        self.undo.push(Undo::Account(from, prev));
        let prev = self.accounts.insert(
            to,
            AccountState {
                balance: credited,
                ..t
            },
        );
        self.undo.push(Undo::Account(to, prev));
        Ok(())
    }

    fn code_hash(&mut self, contract: &[u8; 32]) -> Option<[u8; 32]> {
        self.contracts
            .accounts
            .get(&Account(*contract))
            .map(|c| c.code.0)
    }

    fn code(&mut self, hash: &[u8; 32]) -> Option<Vec<u8>> {
        self.contracts.code.get(&Hash(*hash)).cloned()
    }

    fn mark(&mut self) -> usize {
        self.undo.len()
    }

    fn rollback(&mut self, mark: usize) {
        while self.undo.len() > mark {
            match self.undo.pop().expect("len > mark") {
                Undo::Account(a, prev) => match prev {
                    Some(v) => {
                        self.accounts.insert(a, v);
                    }
                    None => {
                        self.accounts.remove(&a);
                    }
                },
                Undo::Storage(k, prev) => match prev {
                    Some(v) => {
                        self.contracts.storage.insert(k, v);
                    }
                    None => {
                        self.contracts.storage.remove(&k);
                    }
                },
                Undo::Contract(a, prev) => match prev {
                    Some(v) => {
                        self.contracts.accounts.insert(a, v);
                    }
                    None => {
                        self.contracts.accounts.remove(&a);
                    }
                },
                Undo::Code(h) => {
                    self.contracts.code.remove(&h);
                }
            }
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Runs a call with the state's accounts and contracts moved into a host, and moves them back.
pub(crate) fn run(
    accounts: &mut BTreeMap<Account, AccountState>,
    contracts: &mut Contracts,
    env: engine::Env,
    call: engine::Call,
    method_optional: bool,
    prepare: impl FnOnce(&mut LedgerHost) -> Result<(), engine::Failure>,
) -> engine::Outcome {
    let mut host = LedgerHost::new(std::mem::take(accounts), std::mem::take(contracts));
    let mark = host.mark();
    let outcome = match prepare(&mut host) {
        Err(f) => {
            host.rollback(mark);
            (
                Box::new(host) as Box<dyn Host>,
                engine::Outcome {
                    result: Err(f),
                    gas_used: 0,
                    events: Vec::new(),
                },
            )
        }
        Ok(()) => engine_handle().call(Box::new(host), env, call),
    };
    let (host, mut result) = outcome;
    let mut host = host
        .into_any()
        .downcast::<LedgerHost>()
        .expect("the host given is a LedgerHost");
    if method_optional && matches!(result.result, Err(engine::Failure::NoMethod(_))) {
        result.result = Ok(Vec::new());
    }
    if result.result.is_err() {
        host.rollback(mark);
        result.events.clear();
    }
    *accounts = std::mem::take(&mut host.accounts);
    *contracts = std::mem::take(&mut host.contracts);
    result
}

fn outcome(contract: Account, o: engine::Outcome, extra_gas: u64) -> ContractOutcome {
    let (error, output) = match o.result {
        Ok(out) => (None, out),
        Err(f) => (Some(f.to_string()), Vec::new()),
    };
    ContractOutcome {
        contract,
        error,
        output,
        events: o
            .events
            .into_iter()
            .map(|e| Event {
                contract: Account(e.contract),
                topic: e.topic,
                data: e.data,
            })
            .collect(),
        gas_used: o.gas_used + extra_gas,
    }
}

impl crate::state::State {
    /// Carries out a contract transaction whose checks passed: runs it, charges the fee for
    /// the gas used and takes the sequence number, whatever the outcome.
    pub(crate) fn apply_contract(
        &mut self,
        body: &crate::tx::AccountTx,
        action: &ContractAction,
    ) -> crate::state::Effect {
        let from = body.from;
        let env = engine::Env {
            height: self.height + 1,
            time_ms: self.block_time_ms,
        };
        let result = match action {
            ContractAction::Deploy { code, init, gas } => {
                let address = contract_address(&from, body.seq);
                let hash = Hash(*blake3::hash(code).as_bytes());
                let new_code = !self.contracts.code.contains_key(&hash);
                let setup = DEPLOY_GAS
                    + if new_code {
                        CODE_BYTE_GAS * code.len() as u64
                    } else {
                        0
                    };
                if setup > *gas {
                    ContractOutcome {
                        contract: address,
                        error: Some(engine::Failure::OutOfGas.to_string()),
                        output: Vec::new(),
                        events: Vec::new(),
                        gas_used: *gas,
                    }
                } else {
                    let call = engine::Call {
                        contract: address.0,
                        caller: from.0,
                        method: "init".into(),
                        input: init.clone(),
                        value: 0,
                        gas: gas - setup,
                    };
                    let o = run(
                        &mut self.accounts,
                        &mut self.contracts,
                        env,
                        call,
                        true,
                        |host| {
                            engine_handle()
                                .prepare(code)
                                .map_err(|e| engine::Failure::Trap(e.to_string()))?;
                            if host.contracts.accounts.contains_key(&address) {
                                return Err(engine::Failure::Limit("the address is taken".into()));
                            }
                            host.create(
                                address,
                                ContractInfo {
                                    code: hash,
                                    creator: from,
                                },
                                code.clone(),
                            );
                            Ok(())
                        },
                    );
                    outcome(address, o, setup)
                }
            }
            ContractAction::Call {
                contract,
                method,
                input,
                value,
                gas,
            } => {
                let call = engine::Call {
                    contract: contract.0,
                    caller: from.0,
                    method: method.clone(),
                    input: input.clone(),
                    value: *value,
                    gas: *gas,
                };
                let o = run(
                    &mut self.accounts,
                    &mut self.contracts,
                    env,
                    call,
                    false,
                    |_| Ok(()),
                );
                outcome(*contract, o, 0)
            }
        };
        let fee = fee_for(self.min_fee, result.gas_used).min(body.fee);
        let mut sender = self.account(&from);
        sender.balance -= fee.min(sender.balance);
        sender.seq += 1;
        self.accounts.insert(from, sender);
        self.burned += fee;
        crate::state::Effect::Contract {
            from,
            fee,
            outcome: result,
        }
    }

    /// Runs `method` of `contract` read-only against this state (no transaction, no fee): what
    /// it returns, emits and costs; nothing it writes is kept.
    pub fn query(
        &self,
        contract: &Account,
        method: &str,
        input: &[u8],
        gas: u64,
    ) -> ContractOutcome {
        let mut accounts = self.accounts.clone();
        let mut contracts = self.contracts.clone();
        let call = engine::Call {
            contract: contract.0,
            caller: [0; 32],
            method: method.to_owned(),
            input: input.to_vec(),
            value: 0,
            gas: gas.min(MAX_GAS),
        };
        let env = engine::Env {
            height: self.height,
            time_ms: self.block_time_ms,
        };
        let o = run(&mut accounts, &mut contracts, env, call, false, |_| Ok(()));
        outcome(*contract, o, 0)
    }
}
