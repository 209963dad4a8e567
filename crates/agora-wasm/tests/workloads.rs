//! The genome workload (`workloads/genome`) built with the real C toolchain: the same program
//! compiled natively and for wasm32-wasi must print the same bytes, and the NaN kernel must
//! print the same bytes in every sandbox.
//!
//! `build.sh` needs `clang lld wasi-libc libclang-rt-dev-wasm32` (Debian packages). Without
//! them these tests fail, saying so: CI installs them, and a silent skip would hide a sandbox
//! that no longer runs real C programs.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use agora_wasm::{Config, RunError, RunInput, RunOutput, Sandbox};

/// Ample for every unit here (the largest needs about 10^9).
const FUEL: u64 = 1 << 40;

const PACKAGES: &str = "clang lld wasi-libc libclang-rt-dev-wasm32";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The workload built once per test process into cargo's scratch directory for integration
/// tests (`build.sh` is idempotent and keeps up-to-date outputs).
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("genome-workload");
        let out = Command::new("bash")
            .arg(repo().join("workloads/genome/build.sh"))
            .arg(&dir)
            .output()
            .expect("cannot run bash");
        assert!(
            out.status.success(),
            "workloads/genome/build.sh failed; the wasm toolchain is probably missing: \
             install it with `sudo apt-get install {PACKAGES}`\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(built().join(name)).unwrap()
}

fn native(program: &str, stdin: &[u8]) -> Output {
    let mut child = Command::new(built().join(program))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from a thread: the program may fail and stop reading before it has all of stdin.
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn sandbox(cache: &Path) -> Sandbox {
    Sandbox::new(Config::new(cache)).unwrap()
}

fn run(sb: &Sandbox, wasm: &[u8], stdin: &[u8], fuel: u64) -> Result<RunOutput, RunError> {
    let module = sb.validate(wasm).unwrap();
    sb.run(&module, RunInput::new(stdin.to_vec(), fuel))
}

/// Generated units: native and sandboxed `align` print the same bytes, and the fuel of a unit
/// is the same on every run.
#[test]
fn align_native_and_in_the_sandbox_agree_byte_for_byte() {
    let units = tempfile::tempdir().unwrap();
    let status = Command::new(built().join("gen"))
        .args(["42", "3"])
        .arg(units.path())
        .args(["20000", "6", "150"])
        .status()
        .unwrap();
    assert!(status.success());
    let cache = tempfile::tempdir().unwrap();
    let sb = sandbox(cache.path());
    let align = wasm("align.wasm");
    for u in 0..3 {
        let unit = std::fs::read(units.path().join(format!("unit-{u:03}.fa"))).unwrap();
        let expected = native("align", &unit);
        assert!(expected.status.success(), "{expected:?}");
        let got = run(&sb, &align, &unit, FUEL).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            String::from_utf8_lossy(&expected.stdout),
            "unit {u}"
        );
        let text = String::from_utf8(got.stdout.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "one line per query:\n{text}");
        for line in &lines {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "{line}");
            let score: u32 = fields[1].parse().unwrap();
            // Even queries are planted (a 150-letter stretch of the reference with ~9% edits)
            // and score far above the random odd ones.
            let k: u32 = fields[0].trim_start_matches('q').parse().unwrap();
            if k.is_multiple_of(2) {
                assert!(score > 200, "{line}");
            } else {
                assert!(score < 150, "{line}");
            }
        }
        assert!(got.stderr.is_empty());
        let again = run(&sb, &align, &unit, FUEL).unwrap();
        assert_eq!(again, got, "same output and same fuel on a second run");
    }
}

/// Scores by hand: +2 per identical base, -2 per gap letter, N (or any letter but A, C, G, T)
/// matches nothing; the first best cell (smallest reference end) wins. Names end at the first
/// blank.
#[test]
fn align_scores_a_hand_written_unit_as_documented() {
    // Lower case, CRLF, a sequence over several lines, blank lines, a description.
    let unit = b">chr1 test chunk\r\nACGTTGCAAC\r\ntggatccttag\r\n\r\n\
        >same\nACGTTGCAACTGGATCCTTAG\n\
        >gap one reference letter skipped\nACGTTGCAACGGATCCTTAG\n\
        >inner\nGATC\n\
        >unknown\nNNNN\n\
        >ambiguous\nRYKM\n\
        >single\nT\n";
    let expected = "same\t42\t21\t21\n\
        gap\t38\t21\t20\n\
        inner\t8\t16\t4\n\
        unknown\t0\t0\t0\n\
        ambiguous\t0\t0\t0\n\
        single\t2\t4\t1\n";
    let out = native("align", unit);
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{out:?}");
    let cache = tempfile::tempdir().unwrap();
    let got = run(&sandbox(cache.path()), &wasm("align.wasm"), unit, FUEL).unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), expected);
    // N never matches, not even N in the reference.
    let n_vs_n = b">r\nAANNAA\n>q\nNN\n>q2\nANNA\n";
    let out = native("align", n_vs_n);
    assert_eq!(out.stdout, b"q\t0\t0\t0\nq2\t2\t1\t1\n");
    let got = run(&sandbox(cache.path()), &wasm("align.wasm"), n_vs_n, FUEL).unwrap();
    assert_eq!(got.stdout, out.stdout);
    // No queries: no output, success.
    let out = native("align", b">r\nACGT\n");
    assert!(out.status.success() && out.stdout.is_empty());
}

#[test]
fn malformed_input_is_exit_2_with_the_same_message_both_ways() {
    let cache = tempfile::tempdir().unwrap();
    let sb = sandbox(cache.path());
    let align = wasm("align.wasm");
    let mut long_query = b">r\nACGT\n>q\n".to_vec();
    long_query.extend(std::iter::repeat_n(b'A', 10 * 1024 + 1));
    let cases: &[(&str, &[u8])] = &[
        ("empty", b""),
        ("no header", b"ACGT\n"),
        ("digit", b">r\nAC1T\n"),
        ("no name", b">\nACGT\n"),
        ("empty query", b">r\nACGT\n>q\n\n>q2\nAC\n"),
        ("long query", &long_query),
    ];
    for (what, input) in cases {
        let out = native("align", input);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(out.stdout.is_empty(), "{what}");
        match run(&sb, &align, input, FUEL) {
            Err(RunError::Exit { code, stderr, .. }) => {
                assert_eq!(code, 2, "{what}");
                assert_eq!(
                    String::from_utf8_lossy(&stderr),
                    String::from_utf8_lossy(&out.stderr),
                    "{what}"
                );
                assert!(stderr.starts_with(b"align: malformed input"), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// Three sandboxes with three compile caches (three compilations) print the same bytes, and
/// every NaN arithmetic made is the canonical one.
#[test]
fn nan_kernel_prints_the_same_bytes_in_three_sandboxes() {
    let mut input = Vec::new();
    for bits in [
        0x7ff4_0000_0000_0abc_u64,
        0xfff8_dead_beef_0001,
        0x7ff0_0000_0000_0000,
        0x3ff8_0000_0000_0000,
        0xffc0_0123_7f80_0001,
        0x0000_0000_0000_0000,
    ] {
        input.extend_from_slice(&bits.to_le_bytes());
    }
    input.extend_from_slice(b"tail");
    let nan = wasm("nan.wasm");
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let cache = tempfile::tempdir().unwrap();
        let sb = sandbox(cache.path());
        let out = run(&sb, &nan, &input, FUEL).unwrap();
        assert_eq!(sb.cache_stats().compiled, 1);
        outputs.push((*blake3::hash(&out.stdout).as_bytes(), out.fuel_used, out));
    }
    assert_eq!(outputs[0].0, outputs[1].0);
    assert_eq!(outputs[0].0, outputs[2].0);
    assert_eq!(outputs[0].1, outputs[1].1, "same fuel");
    assert_eq!(outputs[0].1, outputs[2].1, "same fuel");
    let text = String::from_utf8(outputs[0].2.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 12 + 4 + 2, "{text}");
    let generated = text.lines().find(|l| l.starts_with("generated:")).unwrap();
    // x86 hardware gives 0xfff8000000000000 (printed "-nan"); canonicalization makes it positive.
    assert_eq!(
        generated,
        "generated: 0/0=7ff8000000000000 sqrt(-1)=7ff8000000000000 inf-inf=7ff8000000000000 \
         0*inf=7ff8000000000000 f0/0=7fc00000 show=nan"
    );
    assert!(!text.contains("-nan"), "{text}");
}

#[test]
fn a_tiny_fuel_budget_is_out_of_fuel() {
    let cache = tempfile::tempdir().unwrap();
    let sb = sandbox(cache.path());
    let unit = b">r\nACGTACGTACGTACGT\n>q\nACGTACGT\n";
    let err = run(&sb, &wasm("align.wasm"), unit, 10_000).unwrap_err();
    assert_eq!(err, RunError::OutOfFuel { fuel: 10_000 });
    // The same unit with enough fuel succeeds.
    let out = run(&sb, &wasm("align.wasm"), unit, FUEL).unwrap();
    assert_eq!(out.stdout, b"q\t16\t8\t8\n");
}
