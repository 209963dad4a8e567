/*
 * gen: deterministic work units for `align`.
 *
 *     gen SEED UNITS DIR [REF_LEN] [QUERIES] [QLEN]
 *
 * Writes DIR/unit-000.fa ... DIR/unit-(UNITS-1).fa (DIR is created if missing). Each unit is a
 * FASTA file: a reference chunk of REF_LEN letters (default 65536) and QUERIES queries (default
 * 16) of at most QLEN letters (default 256). Every even-numbered query is planted: a copy of a
 * random stretch of the reference with about 5% substitutions, 2% insertions and 2% deletions,
 * so its best score is high and lands near where it was taken (its name says where). Odd
 * queries are random. The reference has ACGT with a rare N (about 1 in 1000).
 *
 * The output depends only on the arguments: the generator is xorshift64* seeded through
 * splitmix64 from SEED and the unit number (no rand(), no clock), so the same command writes
 * the same bytes on every machine. Native only (uses POSIX mkdir).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_REF (1ul << 20)
#define MAX_QUERY (10ul << 10)
#define LINE 60

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct rng {
    uint64_t s;
};

static uint64_t next(struct rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, n) (n small: the modulo bias of a 64-bit draw is negligible and fixed). */
static uint32_t below(struct rng *r, uint32_t n) {
    return (uint32_t)((next(r) >> 11) % n);
}

static const char BASES[4] = {'A', 'C', 'G', 'T'};

/* A base other than `b` (any base if `b` is N). */
static char substitute(struct rng *r, char b) {
    for (;;) {
        char c = BASES[below(r, 4)];
        if (c != b)
            return c;
    }
}

static unsigned long parse(const char *s, const char *what, unsigned long lo, unsigned long hi) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *s == 0 || *end != 0 || *s == '-' || v < lo || v > hi) {
        fprintf(stderr, "gen: %s must be an integer in %lu..%lu, not '%s'\n", what, lo, hi, s);
        exit(2);
    }
    return v;
}

static void put_seq(FILE *f, const char *s, size_t n) {
    for (size_t i = 0; i < n; i += LINE) {
        fwrite(s + i, 1, n - i < LINE ? n - i : LINE, f);
        fputc('\n', f);
    }
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 7) {
        fprintf(stderr, "usage: gen SEED UNITS DIR [REF_LEN=65536] [QUERIES=16] [QLEN=256]\n");
        return 2;
    }
    uint64_t seed = parse(argv[1], "SEED", 0, ~0ul);
    unsigned long units = parse(argv[2], "UNITS", 1, 100000);
    const char *dir = argv[3];
    size_t ref_len = argc > 4 ? parse(argv[4], "REF_LEN", 1, MAX_REF) : 65536;
    unsigned long queries = argc > 5 ? parse(argv[5], "QUERIES", 0, 100000) : 16;
    size_t qlen = argc > 6 ? parse(argv[6], "QLEN", 1, MAX_QUERY) : 256;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "gen: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char *ref = malloc(ref_len), *q = malloc(qlen);
    size_t path_len = strlen(dir) + 32;
    char *path = malloc(path_len);
    if (!ref || !q || !path) {
        fprintf(stderr, "gen: out of memory\n");
        return 1;
    }
    for (unsigned long u = 0; u < units; u++) {
        uint64_t sm = seed ^ (0xD1B54A32D192ED03ull * (u + 1));
        struct rng r = {splitmix64(&sm) | 1};
        snprintf(path, path_len, "%s/unit-%03lu.fa", dir, u);
        FILE *f = fopen(path, "wb");
        if (!f) {
            fprintf(stderr, "gen: cannot write %s: %s\n", path, strerror(errno));
            return 1;
        }
        for (size_t i = 0; i < ref_len; i++)
            ref[i] = below(&r, 1000) == 0 ? 'N' : BASES[below(&r, 4)];
        fprintf(f, ">ref unit=%lu seed=%llu len=%lu\n", u, (unsigned long long)seed,
                (unsigned long)ref_len);
        put_seq(f, ref, ref_len);
        for (unsigned long k = 0; k < queries; k++) {
            size_t n = 0;
            if (k % 2 == 0) {
                size_t span = ref_len > qlen ? ref_len - qlen : 0;
                size_t start = span ? below(&r, (uint32_t)span + 1) : 0, i = start;
                while (n < qlen && i < ref_len) {
                    uint32_t roll = below(&r, 100);
                    if (roll < 2) {
                        i++; /* deletion */
                    } else if (roll < 4) {
                        q[n++] = BASES[below(&r, 4)]; /* insertion */
                    } else if (roll < 9) {
                        q[n++] = substitute(&r, ref[i++]);
                    } else {
                        q[n++] = ref[i++];
                    }
                }
                if (n == 0) /* a tiny reference and only deletions */
                    q[n++] = ref[start];
                fprintf(f, ">q%03lu planted_at=%lu\n", k, (unsigned long)start + 1);
            } else {
                for (; n < qlen; n++)
                    q[n] = BASES[below(&r, 4)];
                fprintf(f, ">q%03lu random\n", k);
            }
            put_seq(f, q, n);
        }
        if (fclose(f) != 0) {
            fprintf(stderr, "gen: cannot write %s\n", path);
            return 1;
        }
    }
    return 0;
}
