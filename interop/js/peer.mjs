#!/usr/bin/env node
// js-libp2p interop test peer for Agora. See README.md.
//
//   node peer.mjs identify-ping <multiaddr/p2p/ID>
//   node peer.mjs kad-find      <multiaddr/p2p/ID> <target-peer-id>
//   node peer.mjs gossip-recv   <multiaddr/p2p/ID> <topic>
//   node peer.mjs gossip-send   <multiaddr/p2p/ID> <topic> <text>
//   node peer.mjs blob-get      <multiaddr/p2p/ID> <blake3-hex>
//
// stdout carries only JSON lines (the result); stderr carries debug logs
// (set DEBUG=libp2p:* for js-libp2p's own logs).

import './node20.mjs' // must stay first: polyfills for Node 20
import { pathToFileURL } from 'node:url'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT } from '@libp2p/kad-dht'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'

export const KAD_PROTOCOL = '/agora/kad/1.0.0'
export const MESHSUB_PROTOCOL = '/meshsub/1.1.0'
export const BLOBS_PROTOCOL = '/agora/blobs/1.0.0'

const log = (...args) => console.error('[peer.mjs]', ...args)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
// what we are waiting for; named in the timeout error
let stage = 'starting'
const step = (s) => { stage = s; log(s) }

// Hard network rule: loopback only. Used both as a dial gate and as the DHT's
// address filter, so nothing learnt from a remote can make us dial elsewhere.
export function isLoopback (ma) {
  try {
    const { host } = ma.toOptions()
    return host.startsWith('127.') || host === '::1'
  } catch {
    return false // dns, relay, ... addresses: never dial them
  }
}
const loopbackOnly = (peer) => ({ ...peer, multiaddrs: peer.multiaddrs.filter(isLoopback) })

export async function createNode () {
  return createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // no peerDiscovery, no bootstrap, no mDNS/UPnP: we only dial what we are told
    connectionGater: { denyDialMultiaddr: (ma) => !isLoopback(ma) },
    services: {
      // identify and ping are services in their own right; kad-dht and
      // gossipsub declare a dependency on them, libp2p refuses to start otherwise
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: KAD_PROTOCOL,
        clientMode: false,
        // the default mapper drops private (incl. loopback) addresses, which
        // would make every 127.0.0.1 peer unusable for the DHT
        peerInfoMapper: loopbackOnly
      }),
      pubsub: (components) => {
        const ps = gossipsub({
          globalSignaturePolicy: 'StrictSign', // the default, stated explicitly
          emitSelf: false,
          fallbackToFloodsub: false
        })(components)
        // js gossipsub offers /meshsub/1.2.0 first; pin it to 1.1.0, the
        // version Agora speaks, so the test exercises exactly that protocol
        ps.multicodecs = [MESHSUB_PROTOCOL]
        return ps
      }
    }
  })
}

// Resolves when predicate() is true, re-checking on each of the given events.
function waitFor (target, events, predicate) {
  return new Promise((resolve) => {
    const check = () => {
      if (!predicate()) return
      for (const e of events) target.removeEventListener(e, check)
      resolve()
    }
    for (const e of events) target.addEventListener(e, check)
    check()
  })
}

// rust-libp2p's ping handler serves one inbound ping stream per connection at a time and
// resets the older one when a second opens. Our kad-dht pings the remote on its own (before it
// enters the routing table), which can race with our explicit pings: retry a reset once or twice.
async function pingOnce (node, remote) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await node.services.ping.ping(remote)
    } catch (err) {
      if (attempt >= 3 || !String(err?.message ?? err).includes('reset')) throw err
      step(`ping attempt ${attempt} was reset; retrying`)
    }
  }
}

async function identifyPing (node, remote, identified) {
  step('waiting for identify')
  const id = await identified
  step('pinging')
  const rtt = []
  for (let i = 0; i < 3; i++) rtt.push(await pingOnce(node, remote))
  return {
    ok: true,
    local_peer_id: node.peerId.toString(),
    remote_peer_id: remote.toString(),
    agent_version: id.agentVersion ?? null,
    protocol_version: id.protocolVersion ?? null,
    protocols: id.protocols,
    listen_addrs: id.listenAddrs.map(String),
    rtt_ms: rtt
  }
}

async function kadFind (node, remote, identified, [targetStr]) {
  const target = peerIdFromString(targetStr)
  const dht = node.services.dht
  step('waiting for identify')
  const id = await identified
  if (!id.protocols.includes(KAD_PROTOCOL)) {
    throw new Error(`remote does not advertise ${KAD_PROTOCOL} in identify (DHT not in server mode?)`)
  }
  // The remote enters our routing table after identify + a ping check;
  // a query started before that has nobody to ask.
  step('waiting for the remote to enter the DHT routing table')
  const rt = dht.routingTable
  const added = new Promise((resolve) => {
    rt.addEventListener('peer:add', (evt) => { if (evt.detail.equals(remote)) resolve() })
  })
  if ((await rt.find(remote)) == null) await added
  step(`DHT findPeer ${targetStr}`)
  // useCache: false -> the answer must come from the network, not our peer
  // store. `via` is the peer whose FIND_NODE reply carried the target. We
  // prefer the remote's own reply; but our DHT's background self-query and
  // table refresh (run ~1 s after start) may already have learnt the target
  // through the remote and then ask the target itself.
  const found = (from, peer) => ({ ok: true, target: targetStr, addrs: peer.multiaddrs.map(String), via: from.toString() })
  let fallback
  for await (const ev of dht.findPeer(target, { useCache: false })) {
    if (ev.name === 'PEER_RESPONSE' && ev.from.equals(remote)) {
      const match = ev.closer.find((p) => p.id.equals(target))
      if (match != null) return found(ev.from, match)
    }
    if (ev.name === 'FINAL_PEER') fallback ??= found(ev.from, ev.peer)
  }
  if (fallback != null) return fallback
  throw new Error('target not found')
}

async function gossipRecv (node, remote, identified, [topic]) {
  const ps = node.services.pubsub
  const got = new Promise((resolve) => {
    ps.addEventListener('message', (evt) => {
      const m = evt.detail
      if (m.topic !== topic) return
      resolve({ topic: m.topic, from: m.from?.toString() ?? null, data: new TextDecoder().decode(m.data) })
    })
  })
  ps.subscribe(topic)
  step(`waiting for the remote to subscribe to ${topic}`)
  // ready = the remote is subscribed to the topic (or already in our mesh);
  // our own subscription went out on the same stream before that point
  await waitFor(ps, ['subscription-change', 'gossipsub:graft', 'gossipsub:heartbeat'], () =>
    ps.getSubscribers(topic).some((p) => p.equals(remote)) ||
    ps.getMeshPeers(topic).includes(remote.toString()))
  out({ ready: true })
  step('waiting for a message')
  return got
}

async function gossipSend (node, remote, identified, [topic, text]) {
  const ps = node.services.pubsub
  ps.subscribe(topic)
  step(`waiting for the remote to subscribe to ${topic}`)
  await waitFor(ps, ['subscription-change'], () => ps.getSubscribers(topic).some((p) => p.equals(remote)))
  step('publishing')
  const { recipients } = await ps.publish(topic, new TextEncoder().encode(text))
  if (!recipients.some((p) => p.equals(remote))) throw new Error('remote was not among the recipients')
  // publish() only queues the frame; give yamux a moment to flush before stop()
  await new Promise((resolve) => setTimeout(resolve, 500))
  return { ok: true }
}

// Postcard, the encoding of Agora's frames: unsigned integers are LEB128 varints, a string is
// its byte length then its UTF-8 bytes, a sequence its length then its items, an Option a 0/1
// tag, an enum its variant index then its fields.
function varint (n) {
  const out = []
  let v = BigInt(n)
  do {
    let byte = Number(v & 0x7fn)
    v >>= 7n
    if (v > 0n) byte |= 0x80
    out.push(byte)
  } while (v > 0n)
  return out
}

function readVarint (bytes, at) {
  let v = 0n
  let shift = 0n
  for (;;) {
    const byte = bytes[at++]
    if (byte === undefined) throw new Error('truncated varint')
    v |= BigInt(byte & 0x7f) << shift
    if ((byte & 0x80) === 0) return [v, at]
    shift += 7n
  }
}

function readString (bytes, at) {
  const [len, next] = readVarint(bytes, at)
  const end = next + Number(len)
  return [new TextDecoder().decode(bytes.subarray(next, end)), end]
}

// The blob request {hash, ranges: [(start, Option<end>)]} asking for the whole blob.
function blobRequest (hash) {
  const text = new TextEncoder().encode(hash)
  return Uint8Array.from([...varint(text.length), ...text, ...varint(1), ...varint(0), 0])
}

// The blob response enum, as a JSON-like object (the shape Agora's logs use).
function blobResponse (bytes) {
  const [variant, at] = readVarint(bytes, 0)
  switch (Number(variant)) {
    case 0: return { size: Number(readVarint(bytes, at)[0]) }
    case 1: return 'not_found'
    case 2: return { unavailable: readString(bytes, at)[0] }
    case 3: return { partial: { size: Number(readVarint(bytes, at)[0]) } }
    case 4: return { busy: readString(bytes, at)[0] }
    default: throw new Error(`unknown blob response variant ${variant}`)
  }
}

// Asks an Agora node for a whole blob over /agora/blobs/1.0.0 (a u32-BE length-prefixed
// postcard request, answered by a length-prefixed postcard response and the bao-encoded
// stream) and reports what came back: the response, how many encoded bytes followed, and the
// last 64 of them (the end of the blob's last leaf). The node sends this in yamux data frames
// of up to 63 KiB.
async function blobGet (node, remote, identified, [hash]) {
  step('opening a blob stream')
  const stream = await node.dialProtocol(remote, BLOBS_PROTOCOL)
  const request = blobRequest(hash)
  const head = new Uint8Array(4)
  new DataView(head.buffer).setUint32(0, request.length)
  step('sending the request')
  await stream.sink([head, request])
  step('reading the response')
  const chunks = []
  let total = 0
  for await (const chunk of stream.source) {
    const bytes = chunk.subarray()
    chunks.push(bytes)
    total += bytes.length
  }
  const all = new Uint8Array(total)
  let at = 0
  for (const c of chunks) { all.set(c, at); at += c.length }
  const len = new DataView(all.buffer).getUint32(0)
  const response = blobResponse(all.subarray(4, 4 + len))
  const encoded = all.subarray(4 + len)
  const tail = Buffer.from(encoded.subarray(Math.max(0, encoded.length - 64))).toString('hex')
  return { ok: true, response, encoded_bytes: encoded.length, tail_hex: tail }
}

// mode -> [handler, names of its extra arguments]
const MODES = {
  'identify-ping': [identifyPing, []],
  'kad-find': [kadFind, ['target-peer-id']],
  'gossip-recv': [gossipRecv, ['topic']],
  'gossip-send': [gossipSend, ['topic', 'text']],
  'blob-get': [blobGet, ['blake3-hex']]
}

async function main () {
  const [mode, addr, ...extra] = process.argv.slice(2)
  const timeoutMs = Number(process.env.INTEROP_TIMEOUT_MS) || 20000
  let node
  // Every exit goes through here: one result line, stop the node, exit.
  let done = false
  const finish = async (result, code) => {
    if (done) return
    done = true
    out(result)
    setTimeout(() => process.exit(code), 2000).unref() // don't hang in stop()
    try { await node?.stop() } catch {}
    process.exit(code)
  }
  setTimeout(() => finish({ ok: false, error: `timeout after ${timeoutMs} ms (mode ${mode}) while ${stage}` }, 1), timeoutMs)
  try {
    const [run, argNames] = MODES[mode] ?? []
    if (run == null || addr == null || extra.length < argNames.length) {
      const usage = Object.entries(MODES).map(([m, [, a]]) => [m, '<multiaddr/p2p/ID>', ...a.map((n) => `<${n}>`)].join(' '))
      throw new Error(`usage: node peer.mjs ${usage.join(' | ')}`)
    }
    const ma = multiaddr(addr)
    const remoteStr = ma.getPeerId()
    if (remoteStr == null) throw new Error('multiaddr must end in /p2p/<peer-id>')
    const remote = peerIdFromString(remoteStr)
    node = await createNode()
    log('local peer', node.peerId.toString(), 'listening on', node.getMultiaddrs().map(String).join(' '))
    // subscribe before dialing: identify can finish before dial() returns
    const identified = new Promise((resolve) => {
      node.addEventListener('peer:identify', (evt) => {
        if (evt.detail.peerId.equals(remote)) resolve(evt.detail)
      })
    })
    step(`dialing ${addr}`)
    const conn = await node.dial(ma)
    // js-libp2p 2.x does not hand the expected peer id to noise, so a wrong
    // /p2p/ id would not fail the handshake: check it ourselves
    if (!conn.remotePeer.equals(remote)) {
      throw new Error(`dialed ${remoteStr} but the remote is ${conn.remotePeer}`)
    }
    log('connected to', conn.remoteAddr.toString())
    const result = await run(node, remote, identified, extra)
    await finish(result, 0)
  } catch (err) {
    log(err)
    await finish({ ok: false, error: String(err?.message ?? err) }, 1)
  }
}

// run only as a script, so tests can `import { createNode }` from here
if (process.argv[1] != null && import.meta.url === pathToFileURL(process.argv[1]).href) main()
