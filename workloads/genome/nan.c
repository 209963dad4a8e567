/*
 * nan: a float kernel whose output exposes NaN bit patterns, for the sandbox's determinism tests.
 *
 * Hardware disagrees about NaNs: x86 makes 0.0/0.0 a NaN with the sign bit set
 * (0xfff8000000000000) and propagates an operand's payload; ARM makes the positive default NaN
 * and, in default-NaN mode, drops payloads. Printed raw, such results differ between machines.
 * Under agora-wasm (Cranelift NaN canonicalization) every NaN an arithmetic instruction produces
 * is the canonical quiet NaN (0x7ff8000000000000, 0x7fc00000 in single precision), so this
 * program's output is the same on every machine.
 *
 * Input: any bytes on stdin. They are taken 16 at a time as two little-endian 64-bit patterns
 * (a, b), reinterpreted as doubles and, halved, as floats; a short last block is zero-padded.
 * A fixed set of interesting patterns (signalling and quiet NaNs with payloads, both signs,
 * infinities, zeros, denormals) is processed first, so empty input is useful too.
 *
 * Output, one line per pair: the raw bits (hex) of a+b, a-b, a*b, a/b, sqrt(a), fmin, fmax,
 * a*0, b/0, (a+inf)-inf, a*b+1, float arithmetic, float<->double conversions, and how printf
 * shows a NaN ("nan" or "-nan": the sign bit shows through). Then generated NaNs (0/0, sqrt(-1),
 * inf-inf) and an FNV-1a hash of every result's bits.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Read through volatile so the compiler cannot fold the arithmetic at build time (the point is
 * to run it on the target). */
static volatile double ZERO = 0.0, ONE = 1.0;

static const uint64_t PATTERNS[] = {
    0x7ff8000000000000ull, /* canonical quiet NaN */
    0xfff8000000000000ull, /* x86's default NaN */
    0x7ff4000000000123ull, /* signalling NaN with a payload */
    0xfff0000000000001ull, /* negative signalling NaN, smallest payload */
    0x7fffffffffffffffull, /* quiet NaN, all payload bits */
    0x7ff0000000000000ull, /* +inf */
    0xfff0000000000000ull, /* -inf */
    0x8000000000000000ull, /* -0 */
    0x0000000000000001ull, /* smallest denormal */
    0x3ff0000000000000ull, /* 1.0 */
    0x7fc00001ffc00001ull, /* as floats: quiet NaNs with payloads */
    0xff800001ff812345ull, /* as floats: negative signalling NaNs */
};

static uint64_t hash = 0xcbf29ce484222325ull; /* FNV-1a 64 */

static void mix(uint64_t bits) {
    for (int i = 0; i < 8; i++) {
        hash ^= (bits >> (8 * i)) & 0xff;
        hash *= 0x100000001b3ull;
    }
}

static uint64_t dbits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static double dfrom(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static float ffrom(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void d(const char *name, double v) {
    uint64_t u = dbits(v);
    mix(u);
    printf(" %s=%016llx", name, (unsigned long long)u);
}

static void f(const char *name, float v) {
    uint32_t u = fbits(v);
    mix(u);
    printf(" %s=%08lx", name, (unsigned long)u);
}

static void pair(uint64_t ua, uint64_t ub) {
    double a = dfrom(ua), b = dfrom(ub);
    float fa = ffrom((uint32_t)(ua >> 32)), fb = ffrom((uint32_t)ua);
    printf("%016llx %016llx:", (unsigned long long)ua, (unsigned long long)ub);
    d("add", a + b);
    d("sub", a - b);
    d("mul", a * b);
    d("div", a / b);
    d("sqrt", sqrt(a));
    d("fmin", fmin(a, b));
    d("fmax", fmax(a, b));
    d("mul0", a * ZERO);
    d("div0", b / ZERO);
    d("infsub", (a + ONE / ZERO) - (ONE / ZERO));
    d("muladd", a * b + ONE);
    f("fadd", fa + fb);
    f("fmul", fa * fb);
    f("fdiv", fa / fb);
    f("fsqrt", sqrtf(fa));
    f("demote", (float)(a + b));
    d("promote", (double)(fa * fb));
    d("roundtrip", (double)(float)(a * ONE));
    /* printf shows a NaN's sign: "nan" or "-nan". */
    printf(" show=%g,%g\n", a * b, (double)(fa + fb));
}

int main(void) {
    size_t n = sizeof PATTERNS / sizeof PATTERNS[0];
    for (size_t i = 0; i < n; i++)
        pair(PATTERNS[i], PATTERNS[(i * 5 + 3) % n]);

    unsigned char block[16];
    size_t got;
    while ((got = fread(block, 1, sizeof block, stdin)) > 0) {
        memset(block + got, 0, sizeof block - got);
        uint64_t a = 0, b = 0;
        for (int i = 7; i >= 0; i--) {
            a = a << 8 | block[i];
            b = b << 8 | block[8 + i];
        }
        pair(a, b);
        if (got < sizeof block)
            break;
    }

    double zero_div = ZERO / ZERO, neg_sqrt = sqrt(ZERO - ONE), inf = ONE / ZERO;
    printf("generated:");
    d("0/0", zero_div);
    d("sqrt(-1)", neg_sqrt);
    d("inf-inf", inf - inf);
    d("0*inf", ZERO * inf);
    f("f0/0", (float)ZERO / (float)ZERO);
    printf(" show=%g\n", zero_div);
    printf("fnv1a=%016llx\n", (unsigned long long)hash);
    return 0;
}
