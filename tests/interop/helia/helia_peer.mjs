// A real Helia (JS IPFS) peer for pacswarm's interop tests, driven over stdin/stdout.
//
// One JSON object per line on stdin, one JSON answer per line on stdout, in order; logs go to
// stderr. A request may carry "seq": the answer echoes it.
//
//   {"cmd":"id"}                                   -> {"peer_id", "addrs": [...]}
//   {"cmd":"add","path":P}                         -> {"cid"}  (kubo-compatible UnixFS file)
//   {"cmd":"dial","addr":MULTIADDR}                -> {"ok":true,"peer_id"}
//   {"cmd":"peers"}                                -> {"peers":[{"peer_id","addr"}]}
//   {"cmd":"cat","cid":C,"out":P,"timeout_ms":N}   -> {"ok":true,"size":N}  (bitswap)
//   {"cmd":"cat_gateway","cid":C,"url":U,"out":P,"timeout_ms":N}
//                                                  -> {"ok":true,"size":N}  (trustless gateway only)
//   {"cmd":"subscribe","topic":T}                  -> {"ok":true}            (gossipsub)
//   {"cmd":"subscribers","topic":T}                -> {"peers":[peer id, ...]}
//   {"cmd":"publish","topic":T,"data_b64":B}       -> {"ok":true,"recipients":[peer id, ...]}
//   {"cmd":"messages"}                             -> {"messages":[{"topic","from","data_b64"}]}
//                                                     (everything received since the last call)
//   {"cmd":"quit"}                                 -> {"ok":true}, then exit 0
//   any failure                                    -> {"error":"..."}
//
// The node: TCP on 127.0.0.1 (port 0 unless --listen), noise, yamux, identify, ping, bitswap,
// gossipsub. No routers, no delegated routing, no bootstrap, no mDNS, nothing dialled unless a
// "dial" asks. `--gateway URL` (repeatable) also gives the main node a trustless-gateway block
// broker over exactly those gateways.
//
// Helia 7 targets Node 22; see polyfills.mjs and package.json "overrides" for Node 20.

import './polyfills.mjs'

import { createWriteStream, createReadStream } from 'node:fs'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { fallbackRouter } from '@helia/fallback-router'
import { withLibp2pLight } from '@helia/libp2p'
import { trustlessGatewayBlockBroker } from '@helia/trustless-gateway-client'
import { unixfs } from '@helia/unixfs'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createHeliaLight } from 'helia'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'

// kubo's `ipfs add --cid-version=1` (boxo defaults). @helia/unixfs's own defaults are NOT these:
// it uses 1 MiB chunks and 1024 links per node (the Filecoin-style profile).
const KUBO_IMPORT = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: 262_144 }),
  layout: balanced({ maxChildrenPerNode: 174 })
}

const log = (...args) => { process.stderr.write(`[helia_peer ${new Date().toISOString()}] ${args.join(' ')}\n`) }

function libp2pConfig (listen) {
  return {
    addresses: { listen: [listen] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    connectionManager: { reconnectRetries: 0 },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false })
    }
  }
}

// Helia 7.1.15 bug: Routing.findProviders first runs the non-"fallback" routers and, when there
// are none, waits forever (its lookup queue never goes idle, and the abort signal does not end
// it) before it reaches the fallback routers. So the gateway list is offered through a router
// that does not claim the "fallback" capability.
function gatewayRouter (urls) {
  const inner = fallbackRouter({ gateways: urls, shuffle: false })
  return {
    name: 'static-gateways',
    findProviders: (cid, options) => inner.findProviders(cid, options),
    toString: () => `StaticGateways(${urls.join(', ')})`
  }
}

function gatewayPieces (urls) {
  return {
    routers: [gatewayRouter(urls)],
    blockBrokers: [trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true })]
  }
}

async function writeCat (helia, cid, out, signal) {
  const fs = unixfs(helia)
  const sink = createWriteStream(out)
  let size = 0
  try {
    for await (const chunk of fs.cat(cid, { signal })) {
      size += chunk.byteLength
      if (!sink.write(chunk)) await once(sink, 'drain')
    }
  } finally {
    sink.end()
    await once(sink, 'close')
  }
  return size
}

async function main () {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string', default: '/ip4/127.0.0.1/tcp/0' },
      gateway: { type: 'string', multiple: true, default: [] }
    }
  })
  const init = values.gateway.length > 0 ? gatewayPieces(values.gateway) : {}
  const helia = withBitswap(withLibp2pLight(createHeliaLight(init), libp2pConfig(values.listen)))
  await helia.start()
  const libp2p = helia.libp2p
  log('started', libp2p.peerId.toString(), libp2p.getMultiaddrs().map(String).join(' '))

  // Gossipsub messages are buffered here until a "messages" command drains them: stdout carries
  // only answers, never unsolicited events.
  const pubsub = libp2p.services.pubsub
  const received = []
  pubsub.addEventListener('message', (evt) => {
    const msg = evt.detail
    received.push({
      topic: msg.topic,
      from: msg.type === 'signed' ? msg.from.toString() : null,
      data_b64: Buffer.from(msg.data).toString('base64')
    })
  })

  const handlers = {
    async id () {
      return {
        peer_id: libp2p.peerId.toString(),
        addrs: libp2p.getMultiaddrs().map(String),
        protocols: libp2p.getProtocols()
      }
    },
    async subscribe ({ topic }) {
      pubsub.subscribe(topic)
      return { ok: true }
    },
    async subscribers ({ topic }) {
      return { peers: pubsub.getSubscribers(topic).map(String) }
    },
    async publish ({ topic, data_b64: dataB64 }) {
      const result = await pubsub.publish(topic, Buffer.from(dataB64 ?? '', 'base64'))
      return { ok: true, recipients: result.recipients.map(String) }
    },
    async messages () {
      return { messages: received.splice(0, received.length) }
    },
    async add ({ path }) {
      const cid = await unixfs(helia).addByteStream(createReadStream(path), KUBO_IMPORT)
      return { cid: cid.toString() }
    },
    async dial ({ addr }) {
      const conn = await libp2p.dial(multiaddr(addr), { signal: AbortSignal.timeout(10_000) })
      return { ok: true, peer_id: conn.remotePeer.toString() }
    },
    async peers () {
      return {
        peers: libp2p.getConnections().map(c => ({ peer_id: c.remotePeer.toString(), addr: c.remoteAddr.toString() }))
      }
    },
    async cat ({ cid, out, timeout_ms: timeoutMs }) {
      const size = await writeCat(helia, CID.parse(cid), out, AbortSignal.timeout(timeoutMs ?? 30_000))
      return { ok: true, size }
    },
    async cat_gateway ({ cid, url, out, timeout_ms: timeoutMs }) {
      // A second, private node: no libp2p, no bitswap, empty blockstore, one gateway.
      const light = createHeliaLight(gatewayPieces([url]))
      await light.start()
      try {
        const size = await writeCat(light, CID.parse(cid), out, AbortSignal.timeout(timeoutMs ?? 30_000))
        return { ok: true, size }
      } finally {
        await light.stop()
      }
    }
  }

  const reply = (obj) => { process.stdout.write(JSON.stringify(obj) + '\n') }
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (line.trim() === '') continue
    let req
    try {
      req = JSON.parse(line)
    } catch (err) {
      reply({ error: `bad JSON: ${err.message}` })
      continue
    }
    const extra = req.seq === undefined ? {} : { seq: req.seq }
    if (req.cmd === 'quit') {
      reply({ ok: true, ...extra })
      break
    }
    const handler = Object.hasOwn(handlers, req.cmd) ? handlers[req.cmd] : undefined
    if (handler === undefined) {
      reply({ error: `unknown cmd ${JSON.stringify(req.cmd)}`, ...extra })
      continue
    }
    const t0 = Date.now()
    try {
      const result = await handler(req)
      log(req.cmd, 'ok', `${Date.now() - t0}ms`)
      reply({ ...result, ...extra })
    } catch (err) {
      const detail = err instanceof AggregateError
        ? `${err.message}: ${err.errors.map(e => e.message).join('; ')}`
        : (err?.message ?? String(err))
      log(req.cmd, 'failed', `${Date.now() - t0}ms`, err?.stack ?? String(err))
      reply({ error: `${err?.name ?? 'Error'}: ${detail}`, ...extra })
    }
  }
  log('stopping')
  // Never hang on shutdown: the Python side also kills the process group.
  setTimeout(() => process.exit(0), 3000).unref()
  await helia.stop()
  process.exit(0)
}

main().catch((err) => {
  log('fatal', err?.stack ?? String(err))
  process.stdout.write(JSON.stringify({ error: `fatal: ${err?.message ?? err}` }) + '\n')
  process.exit(1)
})
