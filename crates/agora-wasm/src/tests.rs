//! Sandbox tests. Modules are written in WAT so no wasm toolchain is needed.

use super::*;

const FUEL: u64 = 10_000_000;

fn sandbox(dir: &Path) -> Sandbox {
    Sandbox::new(
        Config::new(dir)
            .with_max_memory(4 << 20)
            .with_max_output(1024),
    )
    .unwrap()
}

fn wasm(wat_text: &str) -> Vec<u8> {
    wat::parse_str(wat_text).unwrap()
}

/// Reads stdin into memory at 1024 (one fd_read), uppercases ASCII letters, writes it to stdout.
const UPPER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $n i32) (local $i i32) (local $c i32)
    ;; iovec at 0: buf 1024, len 4096
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (i32.const 1024) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[test]
fn echo_uppercase_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path());
    let module = sb.validate(&wasm(UPPER)).unwrap();
    let a = sb
        .run(&module, RunInput::new(b"hello, grid!".to_vec(), FUEL))
        .unwrap();
    assert_eq!(a.stdout, b"HELLO, GRID!");
    assert_eq!(a.exit_code, 0);
    assert!(a.fuel_used > 0 && a.fuel_used < FUEL);
    let b = sb
        .run(&module, RunInput::new(b"hello, grid!".to_vec(), FUEL))
        .unwrap();
    assert_eq!(a, b, "same stdout and same fuel");
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let dir = tempfile::tempdir().unwrap();
    // A long wall guard: fuel, not the guard, must stop the loop.
    let sb =
        Sandbox::new(Config::new(dir.path()).with_wall_guard(Duration::from_secs(120))).unwrap();
    let module = sb
        .validate(&wasm(
            r#"(module (func (export "_start") (loop $l (br $l))))"#,
        ))
        .unwrap();
    for _ in 0..2 {
        let err = sb
            .run(&module, RunInput::new(vec![], 1_000_000))
            .unwrap_err();
        assert_eq!(err, RunError::OutOfFuel { fuel: 1_000_000 });
        assert_eq!(err.to_string(), "out of fuel after 1000000 units");
    }
}

#[test]
fn fuel_metering_off_runs_the_same_and_has_its_own_cache_entry() {
    let dir = tempfile::tempdir().unwrap();
    let metered = sandbox(dir.path());
    let unmetered = Sandbox::new(
        Config::new(dir.path())
            .with_max_memory(4 << 20)
            .with_fuel_metering(false),
    )
    .unwrap();
    let bytes = wasm(UPPER);
    let a = metered
        .run(
            &metered.validate(&bytes).unwrap(),
            RunInput::new(b"abc".to_vec(), FUEL),
        )
        .unwrap();
    let b = unmetered
        .run(
            &unmetered.validate(&bytes).unwrap(),
            RunInput::new(b"abc".to_vec(), 1),
        )
        .unwrap();
    assert_eq!(a.stdout, b.stdout);
    assert!(a.fuel_used > 1);
    assert_eq!(b.fuel_used, 0, "no metering, no fuel used, budget ignored");
    // Each compiled its own code: a module compiled without fuel checks is never loaded by a
    // metering sandbox.
    assert_eq!(metered.cache_stats().compiled, 1);
    assert_eq!(unmetered.cache_stats().compiled, 1);
    let cached = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(cached, 2);
}

#[test]
fn wall_guard_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sb =
        Sandbox::new(Config::new(dir.path()).with_wall_guard(Duration::from_millis(50))).unwrap();
    let module = sb
        .validate(&wasm(
            r#"(module (func (export "_start") (loop $l (br $l))))"#,
        ))
        .unwrap();
    let err = sb
        .run(&module, RunInput::new(vec![], u64::MAX))
        .unwrap_err();
    assert!(matches!(err, RunError::WallClockGuard { .. }), "{err}");
}

#[test]
fn memory_grow_past_limit_is_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path()); // 4 MiB = 64 pages
    let module = sb
        .validate(&wasm(
            r#"(module (memory 1)
                 (func (export "_start") (drop (memory.grow (i32.const 100)))))"#,
        ))
        .unwrap();
    let err = sb.run(&module, RunInput::new(vec![], FUEL)).unwrap_err();
    assert_eq!(
        err,
        RunError::OutOfMemory {
            what: "memory",
            limit: 4 << 20
        }
    );
    // Growing within the limit works.
    let module = sb
        .validate(&wasm(
            r#"(module (memory 1)
                 (func (export "_start")
                   (if (i32.eq (memory.grow (i32.const 10)) (i32.const -1)) (then unreachable))))"#,
        ))
        .unwrap();
    sb.run(&module, RunInput::new(vec![], FUEL)).unwrap();
    // An initial memory above the limit fails the same way.
    let module = sb
        .validate(&wasm(r#"(module (memory 100) (func (export "_start")))"#))
        .unwrap();
    let err = sb.run(&module, RunInput::new(vec![], FUEL)).unwrap_err();
    assert!(matches!(err, RunError::OutOfMemory { .. }), "{err}");
}

#[test]
fn output_past_cap_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path()); // cap 1024
    // Writes 600 bytes, `$times` times.
    let writer = |times: u32| {
        format!(
            r#"(module
              (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (func (export "_start") (local $i i32)
                (i32.store (i32.const 0) (i32.const 100))
                (i32.store (i32.const 4) (i32.const 600))
                (loop $l
                  (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br_if $l (i32.lt_u (local.get $i) (i32.const {times}))))))"#
        )
    };
    let ok = sb
        .run_bytes(&wasm(&writer(1)), RunInput::new(vec![], FUEL))
        .unwrap();
    assert_eq!(ok.stdout.len(), 600);
    let err = sb
        .run_bytes(&wasm(&writer(2)), RunInput::new(vec![], FUEL))
        .unwrap_err();
    assert_eq!(
        err,
        RunError::OutputCap {
            stream: Stream::Stdout,
            limit: 1024
        }
    );
    assert_eq!(
        err.to_string(),
        "stdout exceeded the output cap of 1024 bytes"
    );
}

/// Calls clock_time_get(realtime) and random_get(16 bytes), writes the 8 + 16 bytes to stdout.
const CLOCK_RANDOM: &str = r#"
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock2 (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 104)))
    (drop (call $clock2 (i32.const 1) (i64.const 1) (i32.const 112)))
    (drop (call $random (i32.const 120) (i32.const 16)))
    (i32.store (i32.const 0) (i32.const 104))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[test]
fn clocks_are_fixed_and_random_follows_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path());
    let module = sb.validate(&wasm(CLOCK_RANDOM)).unwrap();
    let run = |seed: u8| {
        sb.run(&module, RunInput::new(vec![], FUEL).with_seed([seed; 32]))
            .unwrap()
            .stdout
    };
    let a = run(1);
    assert_eq!(a.len(), 32);
    assert_eq!(a[..8], FIXED_CLOCK_NS.to_le_bytes(), "realtime clock");
    assert_eq!(a[8..16], FIXED_CLOCK_NS.to_le_bytes(), "monotonic clock");
    assert_ne!(a[16..], [0; 16]);
    assert_eq!(run(1), a, "same seed, same randomness");
    let b = run(2);
    assert_eq!(b[..16], a[..16]);
    assert_ne!(b[16..], a[16..], "another seed, other randomness");
}

#[test]
fn forbidden_imports_and_threads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path());
    let import = |module: &str, name: &str| {
        format!(
            r#"(module (import "{module}" "{name}" (func (param i32) (result i32)))
                       (func (export "_start")))"#
        )
    };
    for (module, name) in [
        ("env", "foo"),
        (WASI_MODULE, "path_open"),
        (WASI_MODULE, "sock_accept"),
        (WASI_MODULE, "poll_oneoff"),
    ] {
        let err = sb.validate(&wasm(&import(module, name))).unwrap_err();
        assert_eq!(
            err,
            ValidationError::ForbiddenImport {
                module: module.into(),
                name: name.into()
            }
        );
        assert!(
            err.to_string().contains(&format!("`{module}.{name}`")),
            "{err}"
        );
    }
    let err = sb
        .validate(&wasm(
            r#"(module (memory 1 1 shared) (func (export "_start")))"#,
        ))
        .unwrap_err();
    assert_eq!(
        err,
        ValidationError::ForbiddenFeature {
            feature: "threads (shared memory)"
        }
    );
    assert!(err.to_string().contains("threads (shared memory)"));
    let err = sb
        .validate(&wasm(
            r#"(module (memory 1 1)
                 (func (export "_start") (drop (i32.atomic.load (i32.const 0)))))"#,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("threads"), "{err}");
    // Not a command.
    let err = sb.validate(&wasm("(module)")).unwrap_err();
    assert_eq!(err, ValidationError::NoStart);
    // Garbage.
    assert!(matches!(
        sb.validate(b"not wasm").unwrap_err(),
        ValidationError::Invalid(_)
    ));
}

#[test]
fn compile_cache_survives_restart_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(UPPER);
    {
        let sb = sandbox(dir.path());
        sb.validate(&bytes).unwrap();
        assert_eq!(
            sb.cache_stats(),
            CacheStats {
                disk_hits: 0,
                compiled: 1,
                rejected: 0
            }
        );
    }
    let sb = sandbox(dir.path());
    let module = sb.validate(&bytes).unwrap();
    assert_eq!(
        sb.cache_stats(),
        CacheStats {
            disk_hits: 1,
            compiled: 0,
            rejected: 0
        }
    );
    let out = sb
        .run(&module, RunInput::new(b"abc".to_vec(), FUEL))
        .unwrap();
    assert_eq!(out.stdout, b"ABC");

    // Truncate, then flip a byte: each time the file is rejected, recompiled, rewritten.
    let files: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1);
    let path = &files[0];
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&hex32(&module.hash()))
    );
    let full = fs::read(path).unwrap();
    fs::write(path, &full[..full.len() / 2]).unwrap();
    let sb = sandbox(dir.path());
    let module = sb.validate(&bytes).unwrap();
    assert_eq!(sb.cache_stats().rejected, 1);
    assert_eq!(sb.cache_stats().compiled, 1);
    let out = sb
        .run(&module, RunInput::new(b"xyz".to_vec(), FUEL))
        .unwrap();
    assert_eq!(out.stdout, b"XYZ");
    let mut corrupt = fs::read(path).unwrap();
    assert_eq!(corrupt, full, "rewritten");
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    fs::write(path, &corrupt).unwrap();
    let sb = sandbox(dir.path());
    let module = sb.validate(&bytes).unwrap();
    assert_eq!(
        sb.cache_stats(),
        CacheStats {
            disk_hits: 0,
            compiled: 1,
            rejected: 1
        }
    );
    sb.run(&module, RunInput::new(b"q".to_vec(), FUEL)).unwrap();
}

#[test]
fn trap_and_exit_errors_are_stable() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path());
    let module = sb
        .validate(&wasm(r#"(module (func (export "_start") unreachable))"#))
        .unwrap();
    let a = sb.run(&module, RunInput::new(vec![], FUEL)).unwrap_err();
    let b = sb.run(&module, RunInput::new(vec![], FUEL)).unwrap_err();
    assert_eq!(a, b);
    let RunError::Trap { message, .. } = &a else {
        panic!("{a}")
    };
    assert_eq!(
        message,
        "wasm trap: wasm `unreachable` instruction executed"
    );
    assert!(!a.to_string().contains("0x"), "{a}");

    let exit = |code: i32| {
        format!(
            r#"(module
                 (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                 (memory (export "memory") 1)
                 (func (export "_start") (call $exit (i32.const {code}))))"#
        )
    };
    let ok = sb
        .run_bytes(&wasm(&exit(0)), RunInput::new(vec![], FUEL))
        .unwrap();
    assert_eq!(ok.exit_code, 0);
    let err = sb
        .run_bytes(&wasm(&exit(3)), RunInput::new(vec![], FUEL))
        .unwrap_err();
    assert!(matches!(err, RunError::Exit { code: 3, .. }), "{err}");
}

#[test]
fn args_and_stdin_reach_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path());
    // Writes argv[1] (args_get puts argv pointers at 200, strings at 300).
    let module = sb
        .validate(&wasm(
            r#"(module
              (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
              (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (func (export "_start")
                (drop (call $args (i32.const 200) (i32.const 300)))
                (i32.store (i32.const 0) (i32.load (i32.const 204)))
                (i32.store (i32.const 4) (i32.const 3))
                (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        ))
        .unwrap();
    let out = sb
        .run(
            &module,
            RunInput::new(vec![], FUEL).with_args(vec!["prog".into(), "xyz".into()]),
        )
        .unwrap();
    assert_eq!(out.stdout, b"xyz");
}
