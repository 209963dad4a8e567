/*
 * A fungible token: balances, transfer, allowance (approve / transfer_from).
 * Amounts are u64, little-endian; accounts are 32 bytes.
 *
 *   init          input: supply (8)              the deployer holds the whole supply
 *   transfer      input: to (32) ‖ amount (8)    event "transfer": from ‖ to ‖ amount
 *   approve       input: spender (32) ‖ amount (8)
 *   transfer_from input: from (32) ‖ to (32) ‖ amount (8)   spends the caller's allowance
 *   balance_of    input: account (32)            output: amount (8)
 *   allowance     input: owner (32) ‖ spender (32)  output: amount (8)
 *   supply        output: amount (8)
 */
#include "agora_contract.h"

static uint8_t in[128];
static uint8_t key[65];
static uint8_t val[8];

static uint32_t read_input(uint32_t want) {
    uint32_t n = agora_input(in, sizeof in);
    if (n != want) AGORA_REVERT("bad input length");
    return n;
}

static uint64_t load(const uint8_t *k, uint32_t klen) {
    if (agora_get(k, klen, val, 8) == AGORA_ABSENT) return 0;
    return agora_load_u64(val);
}

static void store(const uint8_t *k, uint32_t klen, uint64_t v) {
    if (v == 0) {
        agora_remove(k, klen);
        return;
    }
    agora_store_u64(val, v);
    agora_put(k, klen, val, 8);
}

static const uint8_t *balance_key(const uint8_t *account) {
    key[0] = 'b';
    memcpy(key + 1, account, 32);
    return key;
}

static uint64_t balance(const uint8_t *account) { return load(balance_key(account), 33); }

static void set_balance(const uint8_t *account, uint64_t v) { store(balance_key(account), 33, v); }

static void move(const uint8_t *from, const uint8_t *to, uint64_t amount) {
    uint64_t have = balance(from);
    if (have < amount) AGORA_REVERT("insufficient balance");
    set_balance(from, have - amount);
    uint64_t other = balance(to);
    if (other + amount < other) AGORA_REVERT("overflow");
    set_balance(to, other + amount);
    uint8_t ev[72];
    memcpy(ev, from, 32);
    memcpy(ev + 32, to, 32);
    agora_store_u64(ev + 64, amount);
    agora_emit((const uint8_t *)"transfer", 8, ev, 72);
}

AGORA_METHOD(init) {
    read_input(8);
    uint64_t supply = agora_load_u64(in);
    uint8_t me[32];
    agora_caller(me);
    set_balance(me, supply);
    store((const uint8_t *)"supply", 6, supply);
}

AGORA_METHOD(transfer) {
    read_input(40);
    uint8_t me[32];
    agora_caller(me);
    move(me, in, agora_load_u64(in + 32));
}

AGORA_METHOD(approve) {
    read_input(40);
    key[0] = 'a';
    agora_caller(key + 1);
    memcpy(key + 33, in, 32);
    store(key, 65, agora_load_u64(in + 32));
}

AGORA_METHOD(transfer_from) {
    read_input(72);
    uint64_t amount = agora_load_u64(in + 64);
    key[0] = 'a';
    memcpy(key + 1, in, 32);
    agora_caller(key + 33);
    uint64_t allowed = load(key, 65);
    if (allowed < amount) AGORA_REVERT("allowance exceeded");
    store(key, 65, allowed - amount);
    move(in, in + 32, amount);
}

AGORA_METHOD(balance_of) {
    read_input(32);
    agora_store_u64(val, balance(in));
    agora_output(val, 8);
}

AGORA_METHOD(allowance) {
    read_input(64);
    key[0] = 'a';
    memcpy(key + 1, in, 64);
    agora_store_u64(val, load(key, 65));
    agora_output(val, 8);
}

AGORA_METHOD(supply) {
    agora_store_u64(val, load((const uint8_t *)"supply", 6));
    agora_output(val, 8);
}
