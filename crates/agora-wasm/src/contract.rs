//! Ledger contracts: WebAssembly modules whose exported functions are methods, run with fuel as
//! gas and a host API of our own (module `agora`) instead of WASI.
//!
//! The engine is configured like the grid sandbox for determinism (fuel, NaN canonicalization,
//! no threads, no relaxed SIMD, memory and table limits) and additionally refuses a start
//! function (all work happens inside a metered method call). What a contract reads and writes
//! goes through a [`Host`] that the ledger implements over its state; this crate knows nothing
//! of accounts or balances beyond that trait.
//!
//! # Host functions (module `agora`; `i32` pointers into the caller's exported `memory`)
//! | name | signature | what |
//! |---|---|---|
//! | `input` | `(buf, cap) -> len` | copies the call's input (up to `cap` bytes), returns its full length |
//! | `output` | `(buf, len)` | sets the call's return data |
//! | `get` | `(key, klen, val, cap) -> len` | copies a stored value, returns its length, `-1` (`UINT32_MAX`) when absent |
//! | `put` | `(key, klen, val, vlen)` | stores a value (keys ≤ [`MAX_KEY`], values ≤ [`MAX_VALUE`]) |
//! | `remove` | `(key, klen)` | removes a value |
//! | `caller` | `(out32)` | the calling account (a contract when called by one) |
//! | `address` | `(out32)` | the contract's own account |
//! | `value` | `() -> i64` | AGR sent with the call (already credited to the contract) |
//! | `balance` | `() -> i64` | the contract's AGR balance |
//! | `transfer` | `(to32, amount i64) -> i32` | pays AGR from the contract: 0 done, 1 insufficient balance |
//! | `emit` | `(topic, tlen, data, dlen)` | an event (topic ≤ 64 bytes, data ≤ 4 KiB) |
//! | `height`, `time` | `() -> i64` | the block's height and time (milliseconds), never the wall clock |
//! | `call` | `(addr32, method, mlen, input, ilen, value i64) -> i32` | calls another contract: 0 ok, 1 failed (its changes undone) |
//! | `return_data` | `(buf, cap) -> len` | the last `call`'s return data (or failure message) |
//! | `revert` | `(msg, len)` | fails the call with a message; does not return |
//!
//! # Gas
//! Gas is wasmtime fuel (about one unit per wasm instruction) plus the host fees in
//! [`GAS`]; running out traps at the same instruction on every machine. A nested `call` shares
//! the caller's remaining gas.
//!
//! # Reentrancy
//! A contract cannot be entered while it is already on the call stack: such a `call` fails
//! (returns 1) with `reentrancy`, and the caller continues. Calls nest at most [`MAX_DEPTH`]
//! deep.
//!
//! # Atomicity
//! The host marks its state before every call and rolls back to the mark when the call fails
//! (revert, trap, out of gas): a failed call changes nothing, a failed nested call undoes only
//! its own changes.

use std::any::Any;
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use wasmparser::{Payload, TypeRef, Validator};
use wasmtime::{AsContextMut, Caller, Engine, InstancePre, Linker, Memory, Module, Store, Trap};

use crate::{
    compat_hash, deterministic_config, deterministic_features, hex32, read_cache_file,
    write_cache_file,
};

/// A 32-byte account.
pub type Address = [u8; 32];

/// The import module of the host API.
pub const MODULE: &str = "agora";
/// Host functions a contract may import.
pub const HOST_FUNCTIONS: &[&str] = &[
    "input",
    "output",
    "get",
    "put",
    "remove",
    "caller",
    "address",
    "value",
    "balance",
    "transfer",
    "emit",
    "height",
    "time",
    "call",
    "return_data",
    "revert",
];
/// Longest storage key, value, event topic and event data; largest input and output.
pub const MAX_KEY: usize = 256;
pub const MAX_VALUE: usize = 64 * 1024;
pub const MAX_TOPIC: usize = 64;
pub const MAX_EVENT_DATA: usize = 4 * 1024;
pub const MAX_IO: usize = 64 * 1024;
/// Events one transaction may emit.
pub const MAX_EVENTS: usize = 256;
/// Nested calls at most.
pub const MAX_DEPTH: usize = 8;
/// Linear memory per instance, and table elements.
pub const MAX_MEMORY: usize = 16 * 1024 * 1024;
pub const MAX_TABLE: usize = 10_000;
/// Largest module accepted at deploy.
pub const MAX_CODE: usize = 256 * 1024;

/// Host fees, in gas, on top of the fuel the wasm itself burns.
///
/// Calibrated with `agora-testbed contract-bench` on the 2-core machine of the README: plain
/// wasm runs about 5,000 gas per microsecond, and the host operations are priced at what they
/// cost there in the same unit (a call's instantiation about 10 µs, a storage access 1–2 µs).
pub mod gas {
    /// Every call, top level or nested: instantiating the module.
    pub const CALL_BASE: u64 = 50_000;
    /// Every host call.
    pub const HOST_CALL: u64 = 200;
    /// Per byte copied between the contract's memory and the host.
    pub const PER_BYTE: u64 = 3;
    /// A storage read.
    pub const GET: u64 = 2_000;
    /// A storage write, plus [`PER_BYTE_STORED`] per byte of key and value.
    pub const PUT: u64 = 6_000;
    pub const PER_BYTE_STORED: u64 = 150;
    pub const REMOVE: u64 = 2_000;
    pub const TRANSFER: u64 = 6_000;
    pub const EMIT: u64 = 2_000;
    pub const PER_EVENT_BYTE: u64 = 30;
    /// A nested call, on top of [`CALL_BASE`].
    pub const CALL: u64 = 5_000;
}
/// The same fees as (name, gas) pairs, for publishing.
pub const GAS: &[(&str, u64)] = &[
    ("call (instantiation)", gas::CALL_BASE),
    ("host call", gas::HOST_CALL),
    ("byte copied", gas::PER_BYTE),
    ("storage get", gas::GET),
    ("storage put", gas::PUT),
    ("byte stored", gas::PER_BYTE_STORED),
    ("storage remove", gas::REMOVE),
    ("transfer", gas::TRANSFER),
    ("event", gas::EMIT),
    ("event byte", gas::PER_EVENT_BYTE),
    ("nested call", gas::CALL),
];

/// What the ledger gives a contract: its state, behind marks that can be rolled back.
pub trait Host: Send + 'static {
    fn get(&mut self, contract: &Address, key: &[u8]) -> Option<Vec<u8>>;
    fn put(&mut self, contract: &Address, key: &[u8], value: Option<&[u8]>);
    fn balance(&mut self, account: &Address) -> u64;
    /// Moves AGR; `Err` when `from` has too little.
    fn transfer(&mut self, from: &Address, to: &Address, amount: u64) -> Result<(), String>;
    /// The code hash of a contract account, if it is one.
    fn code_hash(&mut self, contract: &Address) -> Option<[u8; 32]>;
    /// The module bytes of a code hash (asked only when the compiled module is not cached).
    fn code(&mut self, hash: &[u8; 32]) -> Option<Vec<u8>>;
    fn mark(&mut self) -> usize;
    fn rollback(&mut self, mark: usize);
    /// For taking the concrete host back after a run.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// The block a call runs in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env {
    pub height: u64,
    pub time_ms: u64,
}

/// A call to run.
#[derive(Clone, Debug)]
pub struct Call {
    pub contract: Address,
    pub caller: Address,
    pub method: String,
    pub input: Vec<u8>,
    pub value: u64,
    pub gas: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub contract: Address,
    pub topic: Vec<u8>,
    pub data: Vec<u8>,
}

/// Why a call failed. Deterministic: no addresses, no host details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("out of gas")]
    OutOfGas,
    #[error("reverted: {0}")]
    Revert(String),
    #[error("trap: {0}")]
    Trap(String),
    #[error("no method {0:?} (an exported function without parameters or results)")]
    NoMethod(String),
    #[error("not a contract")]
    NoContract,
    #[error("reentrancy: the contract is already executing")]
    Reentrancy,
    #[error("calls nested more than {MAX_DEPTH} deep")]
    Depth,
    #[error("insufficient funds: {0}")]
    Funds(String),
    #[error("over a limit: {0}")]
    Limit(String),
}

/// What a call did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub result: Result<Vec<u8>, Failure>,
    pub gas_used: u64,
    /// Events of the call (none when it failed).
    pub events: Vec<Event>,
}

/// Why a module is refused at deploy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    #[error("the module is {0} bytes, more than {MAX_CODE}")]
    TooLarge(usize),
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error("imports {module}::{name}, which contracts may not import")]
    ForbiddenImport { module: String, name: String },
    #[error("a start function (contracts do their work in methods)")]
    StartFunction,
    #[error("no exported memory named \"memory\"")]
    NoMemory,
    #[error("the module does not link: {0}")]
    Link(String),
}

/// Why execution stopped inside a host function.
#[derive(Debug)]
enum Stop {
    OutOfGas,
    Revert(String),
    Limit(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::OutOfGas => f.write_str("out of gas"),
            Stop::Revert(m) => write!(f, "revert: {m}"),
            Stop::Limit(m) => write!(f, "limit: {m}"),
        }
    }
}

impl std::error::Error for Stop {}

struct Frame {
    contract: Address,
    caller: Address,
    value: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    return_data: Vec<u8>,
    memory: Option<Memory>,
}

struct Ctx {
    host: Box<dyn Host>,
    env: Env,
    frames: Vec<Frame>,
    events: Vec<Event>,
    limiter: Limiter,
}

struct Limiter;

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_MEMORY {
            return Err(wasmtime::Error::new(Stop::Limit(format!(
                "memory over {MAX_MEMORY} bytes"
            ))));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE {
            return Err(wasmtime::Error::new(Stop::Limit(format!(
                "table over {MAX_TABLE} elements"
            ))));
        }
        Ok(true)
    }
}

struct Shared {
    engine: Engine,
    linker: Mutex<Option<Linker<Ctx>>>,
    modules: Mutex<HashMap<[u8; 32], InstancePre<Ctx>>>,
    cache_dir: PathBuf,
    compat: String,
}

/// The contract engine: one per process (compiled modules are cached in memory by code hash,
/// and on disk in the cache directory).
#[derive(Clone)]
pub struct ContractEngine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ContractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContractEngine")
            .field("cache_dir", &self.shared.cache_dir)
            .finish_non_exhaustive()
    }
}

fn stop<T>(s: Stop) -> wasmtime::Result<T> {
    Err(wasmtime::Error::new(s))
}

fn charge(caller: &mut Caller<'_, Ctx>, gas: u64) -> wasmtime::Result<()> {
    let left = caller.get_fuel()?;
    if left < gas {
        caller.set_fuel(0)?;
        return stop(Stop::OutOfGas);
    }
    caller.set_fuel(left - gas)
}

fn memory(caller: &Caller<'_, Ctx>) -> wasmtime::Result<Memory> {
    match caller.data().frames.last().and_then(|f| f.memory) {
        Some(m) => Ok(m),
        None => stop(Stop::Limit("no memory".into())),
    }
}

fn read(caller: &mut Caller<'_, Ctx>, ptr: u32, len: u32, max: usize) -> wasmtime::Result<Vec<u8>> {
    let len = len as usize;
    if len > max {
        return stop(Stop::Limit(format!("{len} bytes, more than {max}")));
    }
    charge(caller, gas::PER_BYTE * len as u64)?;
    let m = memory(caller)?;
    let mut buf = vec![0; len];
    m.read(&*caller, ptr as usize, &mut buf)
        .map_err(|_| wasmtime::Error::new(Stop::Limit("a pointer outside memory".into())))?;
    Ok(buf)
}

fn write(caller: &mut Caller<'_, Ctx>, ptr: u32, data: &[u8]) -> wasmtime::Result<()> {
    charge(caller, gas::PER_BYTE * data.len() as u64)?;
    let m = memory(caller)?;
    m.write(&mut *caller, ptr as usize, data)
        .map_err(|_| wasmtime::Error::new(Stop::Limit("a pointer outside memory".into())))
}

fn top<'a>(caller: &'a Caller<'_, Ctx>) -> &'a Frame {
    caller
        .data()
        .frames
        .last()
        .expect("a host function runs inside a frame")
}

fn top_mut<'a>(caller: &'a mut Caller<'_, Ctx>) -> &'a mut Frame {
    caller
        .data_mut()
        .frames
        .last_mut()
        .expect("a host function runs inside a frame")
}

/// Checks a contract module: size, imports from [`MODULE`] only (names in
/// [`HOST_FUNCTIONS`]), no start function, an exported memory, the allowed features.
pub fn check_contract(wasm: &[u8]) -> Result<(), DeployError> {
    if wasm.len() > MAX_CODE {
        return Err(DeployError::TooLarge(wasm.len()));
    }
    let invalid = |e: wasmparser::BinaryReaderError| DeployError::Invalid(e.to_string());
    let mut has_memory = false;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    let allowed = import.module == MODULE
                        && matches!(import.ty, TypeRef::Func(_))
                        && HOST_FUNCTIONS.contains(&import.name);
                    if !allowed {
                        return Err(DeployError::ForbiddenImport {
                            module: import.module.to_string(),
                            name: import.name.to_string(),
                        });
                    }
                }
            }
            Payload::StartSection { .. } => return Err(DeployError::StartFunction),
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    if export.name == "memory" && export.kind == wasmparser::ExternalKind::Memory {
                        has_memory = true;
                    }
                }
            }
            _ => {}
        }
    }
    Validator::new_with_features(deterministic_features())
        .validate_all(wasm)
        .map_err(|e| DeployError::Invalid(e.to_string()))?;
    if !has_memory {
        return Err(DeployError::NoMemory);
    }
    Ok(())
}

impl ContractEngine {
    /// An engine whose compiled modules are cached in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Result<ContractEngine, String> {
        let cache_dir = cache_dir.into();
        fs::create_dir_all(&cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
        let mut wc = deterministic_config(512 * 1024);
        wc.consume_fuel(true);
        let engine = Engine::new(&wc).map_err(|e| e.to_string())?;
        let compat = compat_hash(&engine);
        let shared = Arc::new(Shared {
            engine,
            linker: Mutex::new(None),
            modules: Mutex::new(HashMap::new()),
            cache_dir,
            compat,
        });
        let linker = build_linker(&shared.engine, Arc::downgrade(&shared))?;
        *shared.linker.lock().unwrap_or_else(|e| e.into_inner()) = Some(linker);
        Ok(ContractEngine { shared })
    }

    /// Checks and compiles a module for deploy (from the caches when known); returns its hash.
    pub fn prepare(&self, wasm: &[u8]) -> Result<[u8; 32], DeployError> {
        check_contract(wasm)?;
        let hash = *blake3::hash(wasm).as_bytes();
        self.shared.instance_pre(&hash, || Some(wasm.to_vec()))?;
        Ok(hash)
    }

    /// Compiled modules held in memory.
    pub fn cached_modules(&self) -> usize {
        self.shared
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Runs `call` with `host` and gives the host back with the outcome. When the call fails,
    /// the host has been rolled back to where it was.
    pub fn call(&self, host: Box<dyn Host>, env: Env, call: Call) -> (Box<dyn Host>, Outcome) {
        let ctx = Ctx {
            host,
            env,
            frames: Vec::new(),
            events: Vec::new(),
            limiter: Limiter,
        };
        let mut store = Store::new(&self.shared.engine, ctx);
        store.limiter(|c| &mut c.limiter);
        store.set_fuel(call.gas).expect("fuel is enabled");
        let gas = call.gas;
        let result = invoke(&self.shared, &mut store, call);
        let left = store.get_fuel().unwrap_or(0);
        let ctx = store.into_data();
        let events = if result.is_ok() {
            ctx.events
        } else {
            Vec::new()
        };
        (
            ctx.host,
            Outcome {
                result,
                gas_used: gas - left.min(gas),
                events,
            },
        )
    }
}

impl Shared {
    fn cache_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{}.contract.cwasm", hex32(hash), self.compat))
    }

    fn instance_pre(
        &self,
        hash: &[u8; 32],
        code: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<InstancePre<Ctx>, DeployError> {
        if let Some(pre) = self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            return Ok(pre.clone());
        }
        let path = self.cache_path(hash);
        let cached = fs::read(&path)
            .ok()
            .and_then(|file| read_cache_file(&self.engine, &file));
        let module = match cached {
            Some(m) => m,
            None => {
                let wasm = code().ok_or_else(|| DeployError::Invalid("no code".into()))?;
                let m = Module::new(&self.engine, &wasm)
                    .map_err(|e| DeployError::Invalid(e.to_string()))?;
                if let Ok(bytes) = m.serialize() {
                    let _ = write_cache_file(&path, &bytes);
                }
                m
            }
        };
        let pre = self
            .linker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .expect("built at start")
            .instantiate_pre(&module)
            .map_err(|e| DeployError::Link(e.to_string()))?;
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*hash, pre.clone());
        Ok(pre)
    }
}

/// Runs one call (top level or nested) on `cx`'s store. On failure the host is rolled back
/// to its state before the call.
fn invoke(
    shared: &Shared,
    cx: &mut impl AsContextMut<Data = Ctx>,
    call: Call,
) -> Result<Vec<u8>, Failure> {
    let mut cx = cx.as_context_mut();
    let mark = cx.data_mut().host.mark();
    let result = invoke_inner(shared, &mut cx, call);
    if result.is_err() {
        cx.data_mut().host.rollback(mark);
    }
    result
}

fn invoke_inner(
    shared: &Shared,
    cx: &mut wasmtime::StoreContextMut<'_, Ctx>,
    call: Call,
) -> Result<Vec<u8>, Failure> {
    if cx.data().frames.len() >= MAX_DEPTH {
        return Err(Failure::Depth);
    }
    let left = cx.get_fuel().unwrap_or(0);
    if left < gas::CALL_BASE {
        let _ = cx.set_fuel(0);
        return Err(Failure::OutOfGas);
    }
    let _ = cx.set_fuel(left - gas::CALL_BASE);
    if cx.data().frames.iter().any(|f| f.contract == call.contract) {
        return Err(Failure::Reentrancy);
    }
    let hash = cx
        .data_mut()
        .host
        .code_hash(&call.contract)
        .ok_or(Failure::NoContract)?;
    let pre = {
        let host = &mut cx.data_mut().host;
        shared
            .instance_pre(&hash, || host.code(&hash))
            .map_err(|e| Failure::Trap(e.to_string()))?
    };
    if call.value > 0 {
        cx.data_mut()
            .host
            .transfer(&call.caller, &call.contract, call.value)
            .map_err(Failure::Funds)?;
    }
    cx.data_mut().frames.push(Frame {
        contract: call.contract,
        caller: call.caller,
        value: call.value,
        input: call.input,
        output: Vec::new(),
        return_data: Vec::new(),
        memory: None,
    });
    let ran = (|| -> wasmtime::Result<()> {
        let instance = pre.instantiate(&mut *cx)?;
        let memory = instance.get_memory(&mut *cx, "memory");
        if let Some(f) = cx.data_mut().frames.last_mut() {
            f.memory = memory;
        }
        let Ok(method) = instance.get_typed_func::<(), ()>(&mut *cx, &call.method) else {
            return Err(wasmtime::Error::msg(NoMethod));
        };
        method.call(&mut *cx, ())
    })();
    let frame = cx.data_mut().frames.pop().expect("pushed above");
    match ran {
        Ok(()) => Ok(frame.output),
        Err(e) => Err(failure(&e, &call.method)),
    }
}

#[derive(Debug)]
struct NoMethod;

impl std::fmt::Display for NoMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no method")
    }
}

fn failure(e: &wasmtime::Error, method: &str) -> Failure {
    if let Some(s) = e.downcast_ref::<Stop>() {
        return match s {
            Stop::OutOfGas => Failure::OutOfGas,
            Stop::Revert(m) => Failure::Revert(m.clone()),
            Stop::Limit(m) => Failure::Limit(m.clone()),
        };
    }
    if let Some(t) = e.downcast_ref::<Trap>() {
        return match t {
            Trap::OutOfFuel => Failure::OutOfGas,
            other => Failure::Trap(other.to_string()),
        };
    }
    if e.to_string() == "no method" {
        return Failure::NoMethod(method.to_owned());
    }
    // Errors from instantiation (a memory too large, a table): fixed messages.
    Failure::Trap(e.root_cause().to_string())
}

fn build_linker(engine: &Engine, shared: Weak<Shared>) -> Result<Linker<Ctx>, String> {
    let mut l: Linker<Ctx> = Linker::new(engine);
    let e = |r: wasmtime::Result<&mut Linker<Ctx>>| r.map(drop).map_err(|e| e.to_string());
    e(l.func_wrap(
        MODULE,
        "input",
        |mut c: Caller<'_, Ctx>, buf: u32, cap: u32| {
            charge(&mut c, gas::HOST_CALL)?;
            let input = top(&c).input.clone();
            let n = input.len().min(cap as usize);
            write(&mut c, buf, &input[..n])?;
            Ok(input.len() as u32)
        },
    ))?;
    e(l.func_wrap(
        MODULE,
        "output",
        |mut c: Caller<'_, Ctx>, buf: u32, len: u32| {
            charge(&mut c, gas::HOST_CALL)?;
            let data = read(&mut c, buf, len, MAX_IO)?;
            top_mut(&mut c).output = data;
            Ok(())
        },
    ))?;
    e(l.func_wrap(
        MODULE,
        "get",
        |mut c: Caller<'_, Ctx>, k: u32, klen: u32, v: u32, cap: u32| {
            charge(&mut c, gas::HOST_CALL + gas::GET)?;
            let key = read(&mut c, k, klen, MAX_KEY)?;
            let contract = top(&c).contract;
            match c.data_mut().host.get(&contract, &key) {
                None => Ok(u32::MAX),
                Some(val) => {
                    let n = val.len().min(cap as usize);
                    write(&mut c, v, &val[..n])?;
                    Ok(val.len() as u32)
                }
            }
        },
    ))?;
    e(l.func_wrap(
        MODULE,
        "put",
        |mut c: Caller<'_, Ctx>, k: u32, klen: u32, v: u32, vlen: u32| {
            let stored = klen as u64 + vlen as u64;
            charge(
                &mut c,
                gas::HOST_CALL + gas::PUT + gas::PER_BYTE_STORED * stored,
            )?;
            let key = read(&mut c, k, klen, MAX_KEY)?;
            let val = read(&mut c, v, vlen, MAX_VALUE)?;
            let contract = top(&c).contract;
            c.data_mut().host.put(&contract, &key, Some(&val));
            Ok(())
        },
    ))?;
    e(l.func_wrap(
        MODULE,
        "remove",
        |mut c: Caller<'_, Ctx>, k: u32, klen: u32| {
            charge(&mut c, gas::HOST_CALL + gas::REMOVE)?;
            let key = read(&mut c, k, klen, MAX_KEY)?;
            let contract = top(&c).contract;
            c.data_mut().host.put(&contract, &key, None);
            Ok(())
        },
    ))?;
    e(
        l.func_wrap(MODULE, "caller", |mut c: Caller<'_, Ctx>, out: u32| {
            charge(&mut c, gas::HOST_CALL)?;
            let a = top(&c).caller;
            write(&mut c, out, &a)
        }),
    )?;
    e(
        l.func_wrap(MODULE, "address", |mut c: Caller<'_, Ctx>, out: u32| {
            charge(&mut c, gas::HOST_CALL)?;
            let a = top(&c).contract;
            write(&mut c, out, &a)
        }),
    )?;
    e(l.func_wrap(MODULE, "value", |mut c: Caller<'_, Ctx>| {
        charge(&mut c, gas::HOST_CALL)?;
        Ok(top(&c).value as i64)
    }))?;
    e(l.func_wrap(MODULE, "balance", |mut c: Caller<'_, Ctx>| {
        charge(&mut c, gas::HOST_CALL)?;
        let a = top(&c).contract;
        Ok(c.data_mut().host.balance(&a) as i64)
    }))?;
    e(l.func_wrap(
        MODULE,
        "transfer",
        |mut c: Caller<'_, Ctx>, to: u32, amount: i64| {
            charge(&mut c, gas::HOST_CALL + gas::TRANSFER)?;
            let to = read(&mut c, to, 32, 32)?;
            let to: Address = to.try_into().expect("32 bytes");
            let from = top(&c).contract;
            if amount < 0 {
                return Ok(1);
            }
            Ok(
                match c.data_mut().host.transfer(&from, &to, amount as u64) {
                    Ok(()) => 0,
                    Err(_) => 1,
                },
            )
        },
    ))?;
    e(l.func_wrap(
        MODULE,
        "emit",
        |mut c: Caller<'_, Ctx>, t: u32, tlen: u32, d: u32, dlen: u32| {
            charge(
                &mut c,
                gas::HOST_CALL + gas::EMIT + gas::PER_EVENT_BYTE * (tlen as u64 + dlen as u64),
            )?;
            let topic = read(&mut c, t, tlen, MAX_TOPIC)?;
            let data = read(&mut c, d, dlen, MAX_EVENT_DATA)?;
            if c.data().events.len() >= MAX_EVENTS {
                return stop(Stop::Limit(format!("more than {MAX_EVENTS} events")));
            }
            let contract = top(&c).contract;
            c.data_mut().events.push(Event {
                contract,
                topic,
                data,
            });
            Ok(())
        },
    ))?;
    e(l.func_wrap(MODULE, "height", |mut c: Caller<'_, Ctx>| {
        charge(&mut c, gas::HOST_CALL)?;
        Ok(c.data().env.height as i64)
    }))?;
    e(l.func_wrap(MODULE, "time", |mut c: Caller<'_, Ctx>| {
        charge(&mut c, gas::HOST_CALL)?;
        Ok(c.data().env.time_ms as i64)
    }))?;
    e(l.func_wrap(
        MODULE,
        "return_data",
        |mut c: Caller<'_, Ctx>, buf: u32, cap: u32| {
            charge(&mut c, gas::HOST_CALL)?;
            let data = top(&c).return_data.clone();
            let n = data.len().min(cap as usize);
            write(&mut c, buf, &data[..n])?;
            Ok(data.len() as u32)
        },
    ))?;
    e(l.func_wrap(
        MODULE,
        "revert",
        |mut c: Caller<'_, Ctx>, m: u32, len: u32| {
            charge(&mut c, gas::HOST_CALL)?;
            let msg = read(&mut c, m, len.min(1024), 1024)?;
            stop::<()>(Stop::Revert(String::from_utf8_lossy(&msg).into_owned()))
        },
    ))?;
    let weak = shared;
    e(l.func_wrap(
        MODULE,
        "call",
        move |mut c: Caller<'_, Ctx>,
              addr: u32,
              m: u32,
              mlen: u32,
              i: u32,
              ilen: u32,
              value: i64|
              -> wasmtime::Result<u32> {
            charge(&mut c, gas::HOST_CALL + gas::CALL)?;
            let callee = read(&mut c, addr, 32, 32)?;
            let method = read(&mut c, m, mlen, 256)?;
            let input = read(&mut c, i, ilen, MAX_IO)?;
            let Some(shared) = weak.upgrade() else {
                return stop(Stop::Limit("engine gone".into()));
            };
            if value < 0 {
                top_mut(&mut c).return_data = b"a negative value".to_vec();
                return Ok(1);
            }
            let call = Call {
                contract: callee.try_into().expect("32 bytes"),
                caller: top(&c).contract,
                method: String::from_utf8_lossy(&method).into_owned(),
                input,
                value: value as u64,
                gas: 0,
            };
            let events_before = c.data().events.len();
            match invoke(&shared, &mut c, call) {
                Ok(out) => {
                    top_mut(&mut c).return_data = out;
                    Ok(0)
                }
                // Gas is shared: nothing is left for the caller either.
                Err(Failure::OutOfGas) => stop(Stop::OutOfGas),
                Err(f) => {
                    c.data_mut().events.truncate(events_before);
                    top_mut(&mut c).return_data = f.to_string().into_bytes();
                    Ok(1)
                }
            }
        },
    ))?;
    Ok(l)
}
