/*
 * align: Smith-Waterman local alignment of DNA queries against a reference chunk.
 *
 * One work unit on stdin, text FASTA. The first record is the reference chunk, every following
 * record is a query. For each query, in input order, one line on stdout:
 *
 *     name<TAB>score<TAB>ref_end<TAB>query_end
 *
 * name is the header text after '>' up to the first space or tab. score is the best local
 * alignment score. ref_end and query_end are the 1-based positions of the last reference and
 * query letters of that alignment (inclusive), or 0 and 0 when the score is 0 (no alignment).
 *
 * Scoring (integer, linear gaps), DNA:
 *   the same base        +2   (A, C, G or T, case-insensitive)
 *   anything else        -1   (different bases; N and any other letter is an unknown base
 *                              and matches nothing, not even itself)
 *   gap (per letter)     -2
 *
 * Tie-breaking: among the cells holding the best score, the one with the smallest ref_end wins,
 * then the smallest query_end. The scan visits the reference in order and, for each reference
 * letter, the query in order; a cell replaces the best only if its score is strictly greater.
 *
 * Input rules: lines end in LF (a CR before it is ignored); blank lines are ignored; a header
 * line starts with '>' and needs a non-empty name; sequence lines hold letters A-Z or a-z
 * (spaces and tabs inside them are ignored). Anything else -- sequence before the first header,
 * another character, a record without letters, no record at all, a reference longer than
 * MAX_REF letters, a query longer than MAX_QUERY letters, more than MAX_INPUT bytes -- is
 * malformed: a message on stderr and exit status 2, before any output. Zero queries is valid
 * (empty output). Running out of memory or failing to read or write is exit status 3.
 *
 * Memory: the input is held once; the alignment keeps, per query letter, one int32 score (H of
 * the previous reference letter, overwritten in place) and its four match scores: 8 bytes per
 * query letter, O(len(query)).
 *
 * Portable C11 using only stdio, stdlib, string and stdint, so that `cc -O2` and
 * `clang --target=wasm32-wasi -O2` produce byte-identical output.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REF (1u << 20)     /* letters */
#define MAX_QUERY (10u << 10)  /* letters */
#define MAX_INPUT (64u << 20)  /* bytes on stdin */

#define MATCH 2
#define MISMATCH (-1)
#define GAP 2

/* Sequences are stored as base codes: A C G T are 0 1 2 3, every other letter is UNKNOWN. */
#define UNKNOWN 4

static unsigned char base_code(unsigned char upper) {
    switch (upper) {
    case 'A':
        return 0;
    case 'C':
        return 1;
    case 'G':
        return 2;
    case 'T':
        return 3;
    default:
        return UNKNOWN;
    }
}

static void malformed(const char *what, unsigned long line) {
    if (line)
        fprintf(stderr, "align: malformed input, line %lu: %s\n", line, what);
    else
        fprintf(stderr, "align: malformed input: %s\n", what);
    exit(2);
}

/* All of stdin, NUL-terminated. */
static char *read_all(size_t *len_out) {
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fprintf(stderr, "align: out of memory\n");
        exit(3);
    }
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_INPUT) {
                if (fgetc(stdin) == EOF)
                    break;
                malformed("more than 64 MiB on stdin", 0);
            }
            cap *= 2;
            char *grown = realloc(buf, cap + 1);
            if (!grown) {
                fprintf(stderr, "align: out of memory\n");
                exit(3);
            }
            buf = grown;
        }
        size_t n = fread(buf + len, 1, cap - len, stdin);
        if (n == 0)
            break;
        len += n;
    }
    if (ferror(stdin)) {
        fprintf(stderr, "align: cannot read stdin\n");
        exit(3);
    }
    buf[len] = 0;
    *len_out = len;
    return buf;
}

/* One FASTA record, parsed from the input buffer. */
struct record {
    const char *name;
    size_t name_len;
    char *seq; /* base codes, written over the input */
    size_t len;
};

struct parser {
    char *p, *end;
    unsigned long line;
};

/* The next record, or 0 at the end of input. */
static int next_record(struct parser *ps, struct record *rec, int is_query, size_t max_len) {
    /* Skip blank lines; anything else before a header is sequence without a record. */
    for (;;) {
        if (ps->p >= ps->end)
            return 0;
        char *eol = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
        char *stop = eol ? eol : ps->end;
        ps->line++;
        char *q = ps->p;
        while (q < stop && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        if (q == stop) {
            ps->p = eol ? eol + 1 : ps->end;
            continue;
        }
        if (*ps->p != '>')
            malformed("sequence before the first '>' header", ps->line);
        char *name = ps->p + 1, *n = name;
        while (n < stop && *n != ' ' && *n != '\t' && *n != '\r')
            n++;
        if (n == name)
            malformed("header without a name", ps->line);
        rec->name = name;
        rec->name_len = (size_t)(n - name);
        ps->p = eol ? eol + 1 : ps->end;
        break;
    }
    /* Sequence lines up to the next header, compacted in place. */
    char *out = ps->p;
    rec->seq = out;
    size_t len = 0;
    while (ps->p < ps->end && *ps->p != '>') {
        ps->line++;
        char *c = ps->p;
        for (; c < ps->end && *c != '\n'; c++) {
            unsigned char ch = (unsigned char)*c;
            if (ch >= 'a' && ch <= 'z')
                ch = (unsigned char)(ch - 'a' + 'A');
            if (ch >= 'A' && ch <= 'Z') {
                if (len == max_len)
                    malformed(is_query ? "query longer than 10240 letters"
                                       : "reference longer than 1048576 letters",
                              ps->line);
                out[len++] = (char)base_code(ch);
            } else if (ch != ' ' && ch != '\t' && ch != '\r') {
                malformed("a sequence holds a character other than a letter", ps->line);
            }
        }
        ps->p = c < ps->end ? c + 1 : ps->end;
    }
    if (len == 0)
        malformed("a record has no sequence", ps->line);
    rec->len = len;
    return 1;
}

struct hit {
    int32_t score;
    uint32_t ref_end, query_end;
};

/*
 * One query letter's column: H of the previous reference letter and the letter's score against
 * each base. Keeping them together lets the inner loop walk one pointer and read the score at a
 * constant offset, which leaves registers free (this matters for the wasm build: Cranelift has
 * to keep fuel and interruption checks in registers too).
 */
struct cell {
    int32_t h;
    int8_t score[4];
};

/*
 * Unrolling the inner loop 8 times barely changes the native build but matters in the sandbox:
 * wasmtime checks fuel and the interruption epoch once per iteration of a wasm loop, and this
 * amortizes them over 8 cells. The pragmas are hints; other compilers ignore them.
 */
#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll_count(8)")
#elif defined(__GNUC__)
#define UNROLL _Pragma("GCC unroll 8")
#else
#define UNROLL
#endif

/*
 * One row of Smith-Waterman with linear gaps: `c` holds H(i-1, j) for j = 1..m; the loop
 * overwrites it with H(i, j), carrying H(i-1, j-1) in `diag` and H(i, j-1) in `left`, and sets
 * `row_max` to the row's largest H. SCORE is the substitution score of the cell at `c`. The
 * maximum with `left - GAP` comes last so the loop-carried chain is one subtraction and one
 * maximum per cell.
 */
#define ROW(SCORE)                                          \
    UNROLL for (; c != end; c++) {                          \
        int32_t up = c->h;                                  \
        int32_t v = diag + (SCORE);                         \
        int32_t g = up - GAP;                               \
        v = v > g ? v : g;                                  \
        v = v > 0 ? v : 0;                                  \
        g = left - GAP;                                     \
        v = v > g ? v : g;                                  \
        diag = up;                                          \
        left = v;                                           \
        c->h = v;                                           \
        row_max = row_max > v ? row_max : v;                \
    }

/*
 * Aligns one query (its cells already hold the scores) against the reference. A loop per base
 * code makes the score offset a constant. Only a row whose maximum beats the best so far is
 * scanned again for its first such cell.
 */
static struct hit align(const char *ref, size_t n, struct cell *cells, size_t m) {
    struct hit best = {0, 0, 0};
    for (size_t j = 0; j < m; j++)
        cells[j].h = 0;
    for (size_t i = 0; i < n; i++) {
        struct cell *c = cells, *end = cells + m;
        int32_t diag = 0, left = 0, row_max = 0;
        switch (ref[i]) {
        case 0:
            ROW(c->score[0])
            break;
        case 1:
            ROW(c->score[1])
            break;
        case 2:
            ROW(c->score[2])
            break;
        case 3:
            ROW(c->score[3])
            break;
        default:
            ROW(MISMATCH)
            break;
        }
        if (row_max > best.score) {
            size_t j = 0;
            while (cells[j].h != row_max)
                j++;
            best.score = row_max;
            best.ref_end = (uint32_t)(i + 1);
            best.query_end = (uint32_t)(j + 1);
        }
    }
    return best;
}

/* The query's substitution scores into its cells. */
static void profile(const char *query, size_t m, struct cell *cells) {
    for (size_t j = 0; j < m; j++)
        for (int k = 0; k < 4; k++)
            cells[j].score[k] = (int8_t)(query[j] == k ? MATCH : MISMATCH);
}

int main(void) {
    size_t len;
    char *input = read_all(&len);
    struct parser ps = {input, input + len, 0};
    /* Parse the whole unit first: malformed input fails before any output or work. */
    size_t count = 0, cap = 64;
    struct record *recs = malloc(cap * sizeof *recs);
    struct cell *cells = malloc(MAX_QUERY * sizeof *cells);
    if (!recs || !cells) {
        fprintf(stderr, "align: out of memory\n");
        return 3;
    }
    for (;;) {
        if (count == cap) {
            cap *= 2;
            struct record *grown = realloc(recs, cap * sizeof *recs);
            if (!grown) {
                fprintf(stderr, "align: out of memory\n");
                return 3;
            }
            recs = grown;
        }
        if (!next_record(&ps, &recs[count], count > 0, count > 0 ? MAX_QUERY : MAX_REF))
            break;
        count++;
    }
    if (count == 0)
        malformed("no FASTA record on stdin (the first record is the reference)", 0);
    for (size_t k = 1; k < count; k++) {
        const struct record *q = &recs[k];
        profile(q->seq, q->len, cells);
        struct hit hit = align(recs[0].seq, recs[0].len, cells, q->len);
        fwrite(q->name, 1, q->name_len, stdout);
        printf("\t%ld\t%lu\t%lu\n", (long)hit.score, (unsigned long)hit.ref_end,
               (unsigned long)hit.query_end);
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "align: cannot write stdout\n");
        return 3;
    }
    return 0;
}
