//! Agora's deterministic WebAssembly sandbox.
//!
//! Grid jobs (and, later, ledger contracts) run untrusted WebAssembly on many peers, and the
//! network accepts a result only when independent peers agree on it. That only works if the same
//! module with the same input gives the same output, the same error and the same fuel on every
//! honest machine. This crate is the one place where that property is built.
//!
//! # Roles
//!
//! - [`Sandbox`] owns a wasmtime [`Engine`] configured for determinism, the WASI preview-1 linker,
//!   the on-disk compile cache and the wall-clock guard thread.
//! - [`Sandbox::validate`] checks a submitted module ([`wasmparser`]) and compiles it (or loads
//!   it from the cache), giving a [`ValidatedModule`]: a pre-linked `InstancePre`, so each run only
//!   instantiates.
//! - [`Sandbox::run`] runs a validated WASI command (`_start`) with a [`RunInput`] and returns a
//!   [`RunOutput`] or a [`RunError`].
//!
//! # Determinism by construction
//!
//! - **Fuel** is the unit of work: every run has a fuel budget and reports the fuel it used.
//!   Running out is [`RunError::OutOfFuel`], at the same instruction on every machine. (Only a
//!   benchmark turns metering off, with [`Config::with_fuel_metering`].)
//! - **Floats**: Cranelift NaN canonicalization is on, so NaN bit patterns do not depend on the CPU.
//! - **No threads, no shared memory, no relaxed SIMD** (engine and validator both refuse them).
//! - **Memory and tables** are limited by a `ResourceLimiter` on the store; growing past the limit
//!   is [`RunError::OutOfMemory`] (a trap, not a `-1` the guest could branch on differently).
//! - **WASI preview 1, minimal**: only the functions in [`ALLOWED_WASI_IMPORTS`] may be imported;
//!   stdin is the caller's bytes, stdout and stderr are captured and capped, args are the caller's.
//!   No environment variables, no preopened directories, no sockets. Both clocks return
//!   [`FIXED_CLOCK_NS`]; `random_get` is a BLAKE3 XOF keyed by the caller's seed.
//! - **Errors are data**: a trap is reported by its trap code's description (no backtrace, no
//!   addresses), so two honest peers produce byte-identical errors.
//! - **The wall-clock guard** (epoch interruption) is only a safety net against a host bug or an
//!   absurd fuel budget: hitting it is [`RunError::WallClockGuard`], which a caller must treat as
//!   "this peer failed", never as the job's result.
//!
//! Caveat: the stack limit ([`Config::max_wasm_stack`]) depends on compiled frame sizes, which are
//! identical for one wasmtime version on one architecture; a deep recursion could overflow on one
//! architecture and not on another.
//!
//! # Compile cache
//!
//! Compiled modules are stored in the caller's cache directory as
//! `<blake3 of the wasm>-<engine compatibility hash>.cwasm`. A file carries a BLAKE3 checksum of
//! its payload, written by this crate (temporary file + rename); a file whose checksum does not
//! match, or that wasmtime refuses, is recompiled and overwritten, never trusted. The compatibility
//! hash in the name means a wasmtime upgrade or a configuration change misses the cache instead of
//! loading incompatible code. [`Sandbox::cache_stats`] reports hits and compilations.
//!
//! # Example
//!
//! ```no_run
//! use agora_wasm::{Config, RunInput, Sandbox};
//! let sandbox = Sandbox::new(Config::new("/tmp/agora-wasm-cache")).unwrap();
//! let wasm = std::fs::read("job.wasm").unwrap();
//! let module = sandbox.validate(&wasm).unwrap();
//! let out = sandbox.run(&module, RunInput::new(b"input".to_vec(), 10_000_000)).unwrap();
//! println!("{} bytes, {} fuel", out.stdout.len(), out.fuel_used);
//! ```

use std::{
    convert::Infallible,
    fmt, fs,
    hash::{Hash, Hasher},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use thiserror::Error;

pub mod contract;
use wasmparser::{Payload, TypeRef, Validator, WasmFeatures};
use wasmtime::{Engine, InstancePre, Linker, Module, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{
    I32Exit, WasiCtxBuilder,
    clocks::{HostMonotonicClock, HostWallClock},
    p1::WasiP1Ctx,
    p2::pipe::{MemoryInputPipe, MemoryOutputPipe},
};

/// The WASI module name of preview 1.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// The WASI preview-1 functions a module may import. Everything else — `path_*`, `sock_*`,
/// `poll_oneoff` (sleeps on the host clock), `proc_raise`, `fd_readdir`… — is refused at
/// validation. Filesystem-flavoured `fd_*` functions in the list only ever see stdio descriptors
/// because nothing is preopened.
pub const ALLOWED_WASI_IMPORTS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_filestat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_read",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "proc_exit",
    "random_get",
    "sched_yield",
];

/// What both WASI clocks (realtime and monotonic) always return, in nanoseconds.
pub const FIXED_CLOCK_NS: u64 = 0;

/// How often the wall-clock guard thread advances the engine's epoch.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sandbox configuration. Construct with [`Config::new`] and adjust with the `with_*` methods.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the compile cache (created if missing).
    pub cache_dir: PathBuf,
    /// Maximum size of a linear memory, in bytes.
    pub max_memory: usize,
    /// Maximum number of elements of a table.
    pub max_table_elements: usize,
    /// Maximum bytes on stdout and, separately, on stderr.
    pub max_output: usize,
    /// Maximum wasm stack, in bytes.
    pub max_wasm_stack: usize,
    /// Wall-clock safety net per run.
    pub wall_guard: Duration,
    /// Whether runs are fuel-metered (default on). Benchmarks only: grid jobs and contracts
    /// always meter, because fuel is what makes a run's length the same on every peer.
    pub fuel_metering: bool,
}

impl Config {
    /// Safe defaults: 256 MiB memory, 10,000 table elements, 16 MiB per output stream, 512 KiB
    /// stack, 60 s wall guard.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            max_memory: 256 << 20,
            max_table_elements: 10_000,
            max_output: 16 << 20,
            max_wasm_stack: 512 << 10,
            wall_guard: Duration::from_secs(60),
            fuel_metering: true,
        }
    }

    pub fn with_max_memory(mut self, bytes: usize) -> Self {
        self.max_memory = bytes;
        self
    }

    pub fn with_max_table_elements(mut self, elements: usize) -> Self {
        self.max_table_elements = elements;
        self
    }

    pub fn with_max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    pub fn with_max_wasm_stack(mut self, bytes: usize) -> Self {
        self.max_wasm_stack = bytes;
        self
    }

    pub fn with_wall_guard(mut self, guard: Duration) -> Self {
        self.wall_guard = guard;
        self
    }

    /// Turns fuel metering off or on. **Benchmarks only; grid and contracts always meter.**
    /// Without it [`RunInput::fuel`] is ignored, [`RunOutput::fuel_used`] is 0, a run never ends
    /// in [`RunError::OutOfFuel`] and only the wall-clock guard stops an endless loop. It exists
    /// to measure what metering costs. The compile cache keys on it (a module compiled without
    /// metering is never loaded by a metering sandbox).
    pub fn with_fuel_metering(mut self, on: bool) -> Self {
        self.fuel_metering = on;
        self
    }
}

/// Input of one run.
#[derive(Debug, Clone, Default)]
pub struct RunInput {
    /// Bytes the module reads on stdin.
    pub stdin: Vec<u8>,
    /// Arguments, passed as is (`args[0]` is conventionally the program name).
    pub args: Vec<String>,
    /// Fuel budget.
    pub fuel: u64,
    /// Seed of `random_get`.
    pub seed: [u8; 32],
}

impl RunInput {
    /// No args and an all-zero seed.
    pub fn new(stdin: Vec<u8>, fuel: u64) -> Self {
        Self {
            stdin,
            fuel,
            ..Self::default()
        }
    }

    pub fn with_args(mut self, args: Vec<String>) -> Self {
        self.args = args;
        self
    }

    pub fn with_seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = seed;
        self
    }
}

/// Result of a run that exited with status 0 (or returned from `_start`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Always 0; kept so callers can print it beside failures.
    pub exit_code: i32,
    pub fuel_used: u64,
}

/// Which captured stream hit the output cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// Why a module was refused at submission.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ValidationError {
    #[error(
        "module imports `{module}.{name}`, which the sandbox does not provide: only these \
         {WASI_MODULE} functions are allowed: {}", ALLOWED_WASI_IMPORTS.join(", ")
    )]
    ForbiddenImport { module: String, name: String },
    #[error(
        "module uses {feature}, which the sandbox refuses: jobs must be single-threaded and deterministic"
    )]
    ForbiddenFeature { feature: &'static str },
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    #[error("module does not export a `_start` function: build it as a WASI command")]
    NoStart,
    #[error("module cannot be compiled or linked: {0}")]
    Compile(String),
}

/// Why a run failed. For the same module and input every honest machine returns the same error,
/// with the same text; `fuel_used` is carried where it is meaningful.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RunError {
    #[error("out of fuel after {fuel} units")]
    OutOfFuel { fuel: u64 },
    #[error("out of memory: the module needed more than {limit} bytes of {what}")]
    OutOfMemory { what: &'static str, limit: usize },
    #[error("trap: {message} (after {fuel_used} fuel)")]
    Trap { message: String, fuel_used: u64 },
    #[error("exited with status {code} (after {fuel_used} fuel)")]
    Exit {
        code: i32,
        fuel_used: u64,
        stderr: Vec<u8>,
    },
    #[error("{stream} exceeded the output cap of {limit} bytes")]
    OutputCap { stream: Stream, limit: usize },
    #[error(
        "wall-clock guard of {limit:?} hit: this is a host failure, not a result; lower the fuel budget"
    )]
    WallClockGuard { limit: Duration },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// Why a [`Sandbox`] could not be created.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("cannot create the compile cache directory {path}: {source}")]
    CacheDir { path: PathBuf, source: io::Error },
    #[error("wasmtime engine configuration refused: {0}")]
    Engine(String),
    #[error("cannot set up the WASI linker: {0}")]
    Linker(String),
    #[error("cannot start the wall-clock guard thread: {0}")]
    Guard(io::Error),
}

/// Compile cache counters since the sandbox was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Modules loaded from a valid cache file.
    pub disk_hits: u64,
    /// Modules compiled (cache miss or rejected cache file).
    pub compiled: u64,
    /// Cache files that were present but rejected (bad checksum or refused by wasmtime).
    pub rejected: u64,
}

/// A module that passed validation, compiled and pre-linked. Cheap to clone.
#[derive(Clone)]
pub struct ValidatedModule {
    hash: [u8; 32],
    pre: InstancePre<State>,
}

impl ValidatedModule {
    /// BLAKE3 of the module's bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }
}

impl fmt::Debug for ValidatedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatedModule")
            .field("hash", &hex32(&self.hash))
            .finish_non_exhaustive()
    }
}

/// The deterministic WASI sandbox. See the crate docs.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<State>,
    config: Config,
    compat: String,
    disk_hits: AtomicU64,
    compiled: AtomicU64,
    rejected: AtomicU64,
    stop_guard: Arc<AtomicBool>,
}

impl Sandbox {
    pub fn new(config: Config) -> Result<Self, SandboxError> {
        fs::create_dir_all(&config.cache_dir).map_err(|source| SandboxError::CacheDir {
            path: config.cache_dir.clone(),
            source,
        })?;
        // Speed (measured with workloads/genome, `agora-testbed sandbox-bench`): bounds checks
        // cost nothing, because wasmtime's defaults (signals-based traps, a 4 GiB reservation
        // with guard pages) elide them; fuel and the epoch check cost a few instructions per
        // iteration of a wasm loop, which a job amortizes by unrolling its hot loop. The
        // on-demand instance allocator is kept: the pooling allocator saved about 2 µs of
        // instantiation (5 µs of a 25 µs empty run), nothing next to a job, and would add a cap
        // on concurrent instances.
        let mut wc = deterministic_config(config.max_wasm_stack);
        wc.consume_fuel(config.fuel_metering)
            .epoch_interruption(true);
        let engine = Engine::new(&wc).map_err(|e| SandboxError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)
            .map_err(|e| SandboxError::Linker(e.to_string()))?;

        let compat = compat_hash(&engine);

        let stop_guard = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_guard.clone();
            std::thread::Builder::new()
                .name("agora-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(SandboxError::Guard)?;
        }

        Ok(Self {
            engine,
            linker,
            config,
            compat,
            disk_hits: AtomicU64::new(0),
            compiled: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            stop_guard,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            compiled: self.compiled.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// Checks a submitted module (imports, features, `_start`), compiles it or loads it from the
    /// compile cache, and pre-links it.
    pub fn validate(&self, wasm: &[u8]) -> Result<ValidatedModule, ValidationError> {
        check_module(wasm)?;
        let hash = *blake3::hash(wasm).as_bytes();
        let module = self.load_or_compile(&hash, wasm)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ValidationError::Compile(e.to_string()))?;
        Ok(ValidatedModule { hash, pre })
    }

    /// Runs a validated WASI command.
    pub fn run(&self, module: &ValidatedModule, input: RunInput) -> Result<RunOutput, RunError> {
        let cap = self.config.max_output;
        // One byte more than the cap: a module that writes past the cap leaves cap + 1 bytes.
        let stdout = MemoryOutputPipe::new(cap.saturating_add(1));
        let stderr = MemoryOutputPipe::new(cap.saturating_add(1));
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdin(MemoryInputPipe::new(input.stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&input.args)
            .wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .secure_random(SeededRng::new(&input.seed, "agora-wasm random_get"))
            .insecure_random(SeededRng::new(&input.seed, "agora-wasm insecure random"))
            .insecure_random_seed(u128::from_le_bytes(
                blake3::derive_key("agora-wasm insecure seed", &input.seed)[..16]
                    .try_into()
                    .expect("16 bytes"),
            ));
        let state = State {
            wasi: builder.build_p1(),
            limiter: Limiter {
                max_memory: self.config.max_memory,
                max_table_elements: self.config.max_table_elements,
                hit: None,
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if self.config.fuel_metering {
            store
                .set_fuel(input.fuel)
                .expect("fuel is enabled in the engine");
        }
        let ticks = self.config.wall_guard.as_millis() / EPOCH_TICK.as_millis() + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();

        let result = module.pre.instantiate(&mut store).and_then(|instance| {
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ())
        });
        let fuel_used = match store.get_fuel() {
            Ok(left) => input.fuel - left,
            Err(_) => 0, // metering off
        };
        let limit_hit = store.data().limiter.hit;
        drop(store);

        // Output cap first: it is checked on what was written, whatever happened afterwards.
        let stdout = stdout.contents();
        let stderr = stderr.contents();
        if stdout.len() > cap {
            return Err(RunError::OutputCap {
                stream: Stream::Stdout,
                limit: cap,
            });
        }
        if stderr.len() > cap {
            return Err(RunError::OutputCap {
                stream: Stream::Stderr,
                limit: cap,
            });
        }
        if let Some(what) = limit_hit {
            return Err(RunError::OutOfMemory {
                what,
                limit: match what {
                    "table elements" => self.config.max_table_elements,
                    _ => self.config.max_memory,
                },
            });
        }
        let exit_code = match result {
            Ok(()) => 0,
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    exit.0
                } else if let Some(trap) = e.downcast_ref::<Trap>() {
                    return Err(match trap {
                        Trap::OutOfFuel => RunError::OutOfFuel { fuel: input.fuel },
                        Trap::Interrupt => RunError::WallClockGuard {
                            limit: self.config.wall_guard,
                        },
                        other => RunError::Trap {
                            message: other.to_string(),
                            fuel_used,
                        },
                    });
                } else {
                    // Host errors (a WASI function refusing guest input) are deterministic; their
                    // root cause is a fixed message without addresses.
                    return Err(RunError::Trap {
                        message: e.root_cause().to_string(),
                        fuel_used,
                    });
                }
            }
        };
        if exit_code != 0 {
            return Err(RunError::Exit {
                code: exit_code,
                fuel_used,
                stderr: stderr.to_vec(),
            });
        }
        Ok(RunOutput {
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            exit_code,
            fuel_used,
        })
    }

    /// Validates then runs: for callers holding only the bytes.
    pub fn run_bytes(&self, wasm: &[u8], input: RunInput) -> Result<RunOutput, RunError> {
        let module = self.validate(wasm)?;
        self.run(&module, input)
    }

    fn cache_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.config
            .cache_dir
            .join(format!("{}-{}.cwasm", hex32(hash), self.compat))
    }

    fn load_or_compile(&self, hash: &[u8; 32], wasm: &[u8]) -> Result<Module, ValidationError> {
        let path = self.cache_path(hash);
        if let Ok(file) = fs::read(&path) {
            if let Some(module) = self.load_cached(&file) {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(module);
            }
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        let module =
            Module::new(&self.engine, wasm).map_err(|e| ValidationError::Compile(e.to_string()))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Ok(serialized) = module.serialize() {
            // A cache that cannot be written only costs a recompilation next time.
            let _ = write_cache_file(&path, &serialized);
        }
        Ok(module)
    }

    fn load_cached(&self, file: &[u8]) -> Option<Module> {
        read_cache_file(&self.engine, file)
    }
}

/// A module from a cache file, `blake3(payload) ‖ payload`, written only by
/// [`write_cache_file`]; `None` when the checksum does not match or wasmtime refuses it.
fn read_cache_file(engine: &Engine, file: &[u8]) -> Option<Module> {
    if file.len() < 32 {
        return None;
    }
    let (sum, payload) = file.split_at(32);
    if blake3::hash(payload).as_bytes() != sum {
        return None;
    }
    // SAFETY: the payload is exactly what `Module::serialize` produced for an engine of this
    // configuration (the file name carries the engine's compatibility hash and the checksum
    // matches), written by this crate into the caller's cache directory. wasmtime also checks
    // its version and configuration in the payload's header.
    unsafe { Module::deserialize(engine, payload) }.ok()
}

/// The engine settings every deterministic run needs (grid jobs and contracts alike): NaN
/// canonicalization, no threads (not even compiled in: wasmtime's `threads` feature is off), no
/// relaxed SIMD, no component model, no backtraces in errors, a bounded wasm stack.
fn deterministic_config(max_wasm_stack: usize) -> wasmtime::Config {
    let mut wc = wasmtime::Config::new();
    wc.cranelift_nan_canonicalization(true)
        .wasm_shared_everything_threads(false)
        .wasm_relaxed_simd(false)
        .relaxed_simd_deterministic(true)
        .wasm_component_model(false)
        .wasm_backtrace_max_frames(None)
        .max_wasm_stack(max_wasm_stack);
    wc
}

/// The wasm features a module may use: the defaults without threads, relaxed SIMD, the
/// component model, GC and stack switching.
fn deterministic_features() -> WasmFeatures {
    WasmFeatures::default()
        - WasmFeatures::THREADS
        - WasmFeatures::SHARED_EVERYTHING_THREADS
        - WasmFeatures::RELAXED_SIMD
        - WasmFeatures::COMPONENT_MODEL
        - WasmFeatures::GC
        - WasmFeatures::STACK_SWITCHING
}

/// The first 16 hex digits of BLAKE3 over the engine's compatibility hash: part of cache file
/// names, so a wasmtime upgrade or another configuration misses the cache.
fn compat_hash(engine: &Engine) -> String {
    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex32(hasher.0.finalize().as_bytes())[..16].to_string()
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_guard.store(true, Ordering::Relaxed);
    }
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .field("cache", &self.cache_stats())
            .finish_non_exhaustive()
    }
}

/// Static checks of a submitted module: imports, shared memory, `_start`, then full validation
/// with the features the engine allows.
fn check_module(wasm: &[u8]) -> Result<(), ValidationError> {
    let invalid = |e: wasmparser::BinaryReaderError| ValidationError::Invalid(e.to_string());
    let mut has_start = false;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    let allowed = import.module == WASI_MODULE
                        && matches!(import.ty, TypeRef::Func(_))
                        && ALLOWED_WASI_IMPORTS.contains(&import.name);
                    if !allowed {
                        return Err(ValidationError::ForbiddenImport {
                            module: import.module.to_string(),
                            name: import.name.to_string(),
                        });
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    if memory.map_err(invalid)?.shared {
                        return Err(ValidationError::ForbiddenFeature {
                            feature: "threads (shared memory)",
                        });
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    if export.name == "_start" && export.kind == wasmparser::ExternalKind::Func {
                        has_start = true;
                    }
                }
            }
            _ => {}
        }
    }
    Validator::new_with_features(deterministic_features())
        .validate_all(wasm)
        .map_err(|e| {
            let message = e.to_string();
            if message.contains("threads") {
                ValidationError::ForbiddenFeature { feature: "threads" }
            } else {
                ValidationError::Invalid(message)
            }
        })?;
    if !has_start {
        return Err(ValidationError::NoStart);
    }
    Ok(())
}

fn write_cache_file(path: &Path, payload: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(blake3::hash(payload).as_bytes())?;
    tmp.1.write_all(payload)?;
    tmp.1.sync_all()?;
    drop(tmp.1);
    fs::rename(&tmp.0, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp.0);
    })
}

/// A uniquely named temporary file in `dir` (no extra dependency for this one use).
fn tempfile_in(dir: &Path) -> io::Result<(PathBuf, fs::File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn hex32(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Store data of one run.
struct State {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

/// Memory and table limits. Growing past a limit traps (rather than returning -1) so that
/// running out of memory is an error the same on every peer, and records what was exceeded.
struct Limiter {
    max_memory: usize,
    max_table_elements: usize,
    hit: Option<&'static str>,
}

#[derive(Debug, Error)]
#[error("resource limit exceeded")]
struct LimitExceeded;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = Some("memory");
            return Err(wasmtime::Error::new(LimitExceeded));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            self.hit = Some("table elements");
            return Err(wasmtime::Error::new(LimitExceeded));
        }
        Ok(true)
    }
}

/// Both WASI clocks: always [`FIXED_CLOCK_NS`].
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(FIXED_CLOCK_NS)
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        FIXED_CLOCK_NS
    }
}

/// Randomness derived only from the caller's seed: the BLAKE3 XOF keyed by the seed, with a
/// context string per use. Stable across versions of any RNG crate.
struct SeededRng(blake3::OutputReader);

impl SeededRng {
    fn new(seed: &[u8; 32], context: &str) -> Self {
        let key = blake3::derive_key(context, seed);
        Self(blake3::Hasher::new_keyed(&key).finalize_xof())
    }
}

impl rand_core::TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

/// Feeds `std::hash::Hash` into BLAKE3, for a hash that is stable across Rust versions.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        u64::from_le_bytes(
            self.0.finalize().as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        )
    }
}

#[cfg(test)]
mod tests;
