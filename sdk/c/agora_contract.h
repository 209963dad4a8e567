/*
 * agora_contract.h — the host API of Agora ledger contracts, for C.
 *
 * A contract is a WebAssembly module whose exported functions (no parameters, no results) are
 * its methods. It imports only these functions, from module "agora"; anything else is refused
 * at deploy. Build with Debian's clang:
 *
 *   clang --target=wasm32 -O2 -nostdlib -mbulk-memory \
 *         -Wl,--no-entry -Wl,--allow-undefined -o token.wasm token.c
 *
 * (--allow-undefined lets the agora_* declarations below become imports; a typo becomes an
 * import from "env", which the ledger refuses at deploy.) Define one method per exported
 * function with AGORA_METHOD(name). Gas is fuel (about one unit per wasm instruction) plus the
 * host fees listed in the README; running out of gas, trapping or calling agora_revert undoes
 * everything the call wrote and emitted.
 */
#ifndef AGORA_CONTRACT_H
#define AGORA_CONTRACT_H

#include <stdint.h>

#define AGORA_IMPORT(name) __attribute__((import_module("agora"), import_name(name)))
#define AGORA_METHOD(name) __attribute__((export_name(#name))) void name(void)
/* A method whose name is not a valid C identifier (or is a keyword, like "register"). */
#define AGORA_METHOD_AS(method, fn) __attribute__((export_name(method))) void fn(void)
/* agora_get's answer when the key is absent. */
#define AGORA_ABSENT UINT32_MAX

/* Copies the call's input (at most cap bytes) into buf; returns its full length. */
AGORA_IMPORT("input") uint32_t agora_input(uint8_t *buf, uint32_t cap);
/* Sets the call's return data (at most 64 KiB). */
AGORA_IMPORT("output") void agora_output(const uint8_t *buf, uint32_t len);
/* Copies the stored value of key (at most cap bytes); returns its full length, or AGORA_ABSENT. */
AGORA_IMPORT("get")
uint32_t agora_get(const uint8_t *key, uint32_t klen, uint8_t *val, uint32_t cap);
/* Stores a value (keys up to 256 bytes, values up to 64 KiB) in this contract's store. */
AGORA_IMPORT("put")
void agora_put(const uint8_t *key, uint32_t klen, const uint8_t *val, uint32_t vlen);
AGORA_IMPORT("remove") void agora_remove(const uint8_t *key, uint32_t klen);
/* The calling account (an account, or a contract when called by one). */
AGORA_IMPORT("caller") void agora_caller(uint8_t out[32]);
/* This contract's own account. */
AGORA_IMPORT("address") void agora_address(uint8_t out[32]);
/* AGR (base units) sent with this call, already credited to this contract. */
AGORA_IMPORT("value") uint64_t agora_value(void);
/* This contract's AGR balance. */
AGORA_IMPORT("balance") uint64_t agora_balance(void);
/* Pays AGR from this contract: 0 when done, 1 when the balance is too low. */
AGORA_IMPORT("transfer") uint32_t agora_transfer(const uint8_t to[32], uint64_t amount);
/* An event: topic up to 64 bytes, data up to 4 KiB (at most 256 per transaction). */
AGORA_IMPORT("emit")
void agora_emit(const uint8_t *topic, uint32_t tlen, const uint8_t *data, uint32_t dlen);
/* The block's height and time (milliseconds since 1970): the same on every validator. */
AGORA_IMPORT("height") uint64_t agora_height(void);
AGORA_IMPORT("time") uint64_t agora_time(void);
/*
 * Calls method of another contract with input, sending value AGR: 0 when it succeeded, 1 when
 * it failed (its writes undone; this call goes on). Gas is shared. A contract already executing
 * cannot be called again (the call fails with "reentrancy"); calls nest at most 8 deep.
 */
AGORA_IMPORT("call")
uint32_t agora_call(const uint8_t contract[32], const char *method, uint32_t mlen,
                    const uint8_t *input, uint32_t ilen, uint64_t value);
/* Copies the last agora_call's return data (or its failure message); returns its length. */
AGORA_IMPORT("return_data") uint32_t agora_return_data(uint8_t *buf, uint32_t cap);
/* Fails the call with a message; everything it wrote is undone. Does not return. */
AGORA_IMPORT("revert") __attribute__((noreturn)) void agora_revert(const char *msg, uint32_t len);

/* The compiler may emit calls to these; without a libc the contract brings its own. */
__attribute__((weak)) void *memcpy(void *dst, const void *src, unsigned long n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--) *d++ = *s++;
    return dst;
}
__attribute__((weak)) void *memset(void *dst, int c, unsigned long n) {
    uint8_t *d = dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}
__attribute__((weak)) int memcmp(const void *a, const void *b, unsigned long n) {
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x < *y ? -1 : 1;
    return 0;
}

/* Little helpers. */
static inline uint32_t agora_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}
#define AGORA_REVERT(msg) agora_revert((msg), agora_strlen(msg))
static inline uint64_t agora_load_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline void agora_store_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

#endif
