// Node 20 compatibility shim, imported before anything else by peer.mjs.
// Recent transitive deps of js-libp2p 2.x (it-queue 1.1.x via mortice 3.3.x,
// used by the peer store) call Promise.withResolvers(), an ES2024 API that
// Node only ships from v22. Every published it-queue/mortice version that
// @libp2p/peer-store accepts does this, so npm overrides cannot avoid it.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
