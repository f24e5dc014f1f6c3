// Helia's libp2p stack resolving an IPNS name from one peer, with its own DHT and IPNS code.
//
//   node ipns_resolve.mjs dht    PEER_MULTIADDR ROUTING_KEY_HEX TIMEOUT_MS
//   node ipns_resolve.mjs pubsub PEER_MULTIADDR ROUTING_KEY_HEX TIMEOUT_MS [MIN_SEQUENCE]
//   node ipns_resolve.mjs put    PEER_MULTIADDR VALUE TIMEOUT_MS
//
// dht: a js-libp2p node with @libp2p/kad-dht (client mode, the /ipfs/kad/1.0.0 protocol, the
// `ipns` package's validator and selector, as Helia's routing uses them) dials the peer, waits
// until the peer is in its routing table, and runs `dht.get(routingKey)`: the record comes
// from GET_VALUE under the binary key, and kad-dht validates it before yielding it.
// pubsub: @libp2p/gossipsub subscribes to the IPNS-over-PubSub topic `/record/` +
// base64url(routingKey), prints {"ready":true} once the peer knows it is subscribed, and
// waits for a record message with a sequence of at least MIN_SEQUENCE (default 0; older ones,
// e.g. replayed by gossip, are logged and skipped; the test makes the peer publish then).
// put: the other way round: makes a key and its own record (`createIPNSRecord`, sequence 7,
// value VALUE) and runs `dht.put` (FIND_NODE, then PUT_VALUE to the peer); prints
// {"ok":true,"routing_key_hex","stored_at":[peer ids that echoed the record]}.
// Every record found is checked again with `ipnsValidator` and unmarshalled; prints one JSON
// line {"ok":true,"value","sequence","validity","ttl","from"} (exit 0) or {"ok":false,"error"}
// (exit 1). Nothing is dialled but the given peer; no bootstrap, no mDNS.

import './polyfills.mjs'

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createIPNSRecord, marshalIPNSRecord, multihashToIPNSRoutingKey, unmarshalIPNSRecord } from 'ipns'
import { ipnsSelector } from 'ipns/selector'
import { ipnsValidator } from 'ipns/validator'
import { createLibp2p } from 'libp2p'

const [mode, peerAddr, keyOrValue, timeoutText, minSequence] = process.argv.slice(2)
const routingKey = mode === 'put' ? null : Uint8Array.from(Buffer.from(keyOrValue, 'hex'))
const signal = AbortSignal.timeout(Number(timeoutText ?? 30000))
const log = (...args) => { process.stderr.write(`[ipns_resolve] ${args.join(' ')}\n`) }
const say = (obj) => { process.stdout.write(JSON.stringify(obj) + '\n') }

async function describe (record, from) {
  await ipnsValidator(routingKey, record)
  const parsed = unmarshalIPNSRecord(record)
  return {
    ok: true,
    value: parsed.value,
    sequence: parsed.sequence.toString(),
    validity: parsed.validity,
    ttl: parsed.ttl.toString(),
    from
  }
}

async function sleep (ms) { await new Promise((resolve) => setTimeout(resolve, ms)) }

async function inRoutingTable (dht, peerId) {
  while (dht.routingTable.size === 0) {
    if (signal.aborted) throw new Error(`peer ${peerId} never entered the DHT routing table`)
    await sleep(100)
  }
}

async function putOwn (node, peerId) {
  const dht = node.services.dht
  await inRoutingTable(dht, peerId)
  const key = await generateKeyPair('Ed25519')
  const record = marshalIPNSRecord(await createIPNSRecord(key, keyOrValue, 7n, 3_600_000))
  const ownKey = multihashToIPNSRoutingKey(key.publicKey.toMultihash())
  const storedAt = []
  for await (const event of dht.put(ownKey, record, { signal })) {
    log('dht put event', event.name)
    if (event.name === 'PEER_RESPONSE' && event.record != null &&
        Buffer.from(event.record.value).equals(Buffer.from(record))) {
      storedAt.push(event.from.toString())
    }
  }
  return { ok: true, routing_key_hex: Buffer.from(ownKey).toString('hex'), stored_at: storedAt }
}

async function viaDht (node, peerId) {
  const dht = node.services.dht
  await inRoutingTable(dht, peerId)
  for await (const event of dht.get(routingKey, { signal })) {
    log('dht event', event.name)
    if (event.name === 'VALUE') return await describe(event.value, event.from.toString())
  }
  throw new Error('the DHT query ended without a VALUE')
}

async function viaPubsub (node, peerId) {
  const pubsub = node.services.pubsub
  const topic = '/record/' + Buffer.from(routingKey).toString('base64url')
  const got = new Promise((resolve, reject) => {
    pubsub.addEventListener('message', (evt) => {
      if (evt.detail.topic !== topic) return
      const from = evt.detail.type === 'signed' ? evt.detail.from.toString() : null
      describe(evt.detail.data, from).then((out) => {
        if (BigInt(out.sequence) >= BigInt(minSequence ?? 0)) resolve(out)
        else log('skipped record', out.sequence)
      }, reject)
    })
    signal.addEventListener('abort', () => reject(new Error('no record arrived on ' + topic)))
  })
  pubsub.subscribe(topic)
  while (!pubsub.getMeshPeers(topic).map(String).includes(peerId)) {
    if (signal.aborted) throw new Error(`peer ${peerId} never joined our mesh for ${topic}`)
    await sleep(100)
  }
  say({ ready: true, topic, peer_id: node.peerId.toString() })
  return await got
}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  peerDiscovery: [],
  connectionManager: { reconnectRetries: 0 },
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: true,
      peerInfoMapper: passthroughMapper,
      validators: { ipns: ipnsValidator },
      selectors: { ipns: ipnsSelector }
    }),
    pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false })
  }
})
let code = 1
try {
  const conn = await node.dial(multiaddr(peerAddr), { signal })
  const peerId = conn.remotePeer.toString()
  log('connected to', peerId)
  const run = { pubsub: viaPubsub, put: putOwn, dht: viaDht }[mode]
  if (run == null) throw new Error(`unknown mode ${mode}: dht, pubsub or put`)
  const out = await run(node, peerId)
  say(out)
  code = 0
} catch (err) {
  say({ ok: false, error: `${err.name}: ${err.message}` })
} finally {
  await node.stop()
}
process.exit(code)
