// Node 20 shims for Helia 7 / libp2p 3, which target Node 22. Imported first by helia_peer.mjs
// (ES module imports evaluate in source order, so these exist before any library code runs).

if (typeof Promise.withResolvers !== 'function') {
  // Node 22 (V8 12.x); used by libp2p, it-queue, yamux, bitswap ...
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}
