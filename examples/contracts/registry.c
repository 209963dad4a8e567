/*
 * A name registry: the first to register a name owns it and may hand it on.
 *
 *   register  input: the name (1 to 64 bytes)          event "registered": name
 *   lookup    input: the name                          output: the owner (32)
 *   give      input: new owner (32) ‖ the name         by the owner only
 */
#include "agora_contract.h"

static uint8_t in[96];
static uint8_t key[65];

static uint32_t name_key(const uint8_t *name, uint32_t len) {
    if (len == 0 || len > 64) AGORA_REVERT("a name is 1 to 64 bytes");
    key[0] = 'n';
    memcpy(key + 1, name, len);
    return len + 1;
}

AGORA_METHOD_AS("register", register_name) {
    uint32_t n = agora_input(in, sizeof in);
    if (n > 64) AGORA_REVERT("a name is 1 to 64 bytes");
    uint32_t klen = name_key(in, n);
    uint8_t owner[32];
    if (agora_get(key, klen, owner, 32) != AGORA_ABSENT) AGORA_REVERT("taken");
    agora_caller(owner);
    agora_put(key, klen, owner, 32);
    agora_emit((const uint8_t *)"registered", 10, in, n);
}

AGORA_METHOD(lookup) {
    uint32_t n = agora_input(in, sizeof in);
    if (n > 64) AGORA_REVERT("a name is 1 to 64 bytes");
    uint32_t klen = name_key(in, n);
    uint8_t owner[32];
    if (agora_get(key, klen, owner, 32) != 32) AGORA_REVERT("unknown name");
    agora_output(owner, 32);
}

AGORA_METHOD(give) {
    uint32_t n = agora_input(in, sizeof in);
    if (n <= 32 || n > 96) AGORA_REVERT("input: new owner (32) and the name");
    uint32_t klen = name_key(in + 32, n - 32);
    uint8_t owner[32], me[32];
    if (agora_get(key, klen, owner, 32) != 32) AGORA_REVERT("unknown name");
    agora_caller(me);
    if (memcmp(owner, me, 32) != 0) AGORA_REVERT("only the owner gives a name");
    agora_put(key, klen, in, 32);
}
