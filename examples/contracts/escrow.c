/*
 * An escrow: a depositor pays AGR in; an arbiter releases it to the beneficiary, or the
 * depositor takes it back once the deadline height has passed.
 *
 *   init     input: arbiter (32) ‖ beneficiary (32) ‖ deadline height (8)
 *   deposit  with --value: the first depositor is recorded; event "deposit"
 *   release  by the arbiter only: pays everything to the beneficiary
 *   refund   by the depositor only, after the deadline: pays everything back
 *   status   output: balance (8) ‖ deadline (8) ‖ released (1)
 */
#include "agora_contract.h"

static uint8_t buf[80];

static void need(const char *key, uint8_t *out, uint32_t len) {
    if (agora_get((const uint8_t *)key, agora_strlen(key), out, len) != len)
        AGORA_REVERT("escrow not set up");
}

static int same(const uint8_t *a, const uint8_t *b) { return memcmp(a, b, 32) == 0; }

AGORA_METHOD(init) {
    if (agora_input(buf, sizeof buf) != 72) AGORA_REVERT("input: arbiter, beneficiary, deadline");
    agora_put((const uint8_t *)"arbiter", 7, buf, 32);
    agora_put((const uint8_t *)"beneficiary", 11, buf + 32, 32);
    agora_put((const uint8_t *)"deadline", 8, buf + 64, 8);
}

AGORA_METHOD(deposit) {
    uint64_t v = agora_value();
    if (v == 0) AGORA_REVERT("send AGR with --value");
    uint8_t who[32], stored[32];
    agora_caller(who);
    if (agora_get((const uint8_t *)"depositor", 9, stored, 32) == AGORA_ABSENT)
        agora_put((const uint8_t *)"depositor", 9, who, 32);
    else if (!same(who, stored))
        AGORA_REVERT("only the depositor adds to the escrow");
    uint8_t ev[8];
    agora_store_u64(ev, v);
    agora_emit((const uint8_t *)"deposit", 7, ev, 8);
}

static void pay_out(const char *to_key, const char *topic) {
    uint8_t to[32];
    need(to_key, to, 32);
    uint64_t all = agora_balance();
    if (all == 0) AGORA_REVERT("nothing held");
    if (agora_transfer(to, all) != 0) AGORA_REVERT("transfer failed");
    uint8_t ev[40];
    memcpy(ev, to, 32);
    agora_store_u64(ev + 32, all);
    agora_emit((const uint8_t *)topic, agora_strlen(topic), ev, 40);
    agora_put((const uint8_t *)"released", 8, (const uint8_t *)"\1", 1);
}

AGORA_METHOD(release) {
    uint8_t who[32], arbiter[32];
    agora_caller(who);
    need("arbiter", arbiter, 32);
    if (!same(who, arbiter)) AGORA_REVERT("only the arbiter releases");
    pay_out("beneficiary", "released");
}

AGORA_METHOD(refund) {
    uint8_t who[32], depositor[32], deadline[8];
    agora_caller(who);
    need("depositor", depositor, 32);
    need("deadline", deadline, 8);
    if (!same(who, depositor)) AGORA_REVERT("only the depositor is refunded");
    if (agora_height() <= agora_load_u64(deadline)) AGORA_REVERT("too early: before the deadline");
    pay_out("depositor", "refunded");
}

AGORA_METHOD(status) {
    uint8_t out[17];
    agora_store_u64(out, agora_balance());
    need("deadline", out + 8, 8);
    out[16] = agora_get((const uint8_t *)"released", 8, buf, 1) == AGORA_ABSENT ? 0 : 1;
    agora_output(out, 17);
}
