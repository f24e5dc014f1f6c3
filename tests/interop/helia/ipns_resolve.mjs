// Helia's libp2p stack resolving an IPNS name from one peer, with its own DHT and IPNS code.
//
//   node ipns_resolve.mjs dht    PEER_MULTIADDR ROUTING_KEY_HEX TIMEOUT_MS
//   node ipns_resolve.mjs pubsub PEER_MULTIADDR ROUTING_KEY_HEX TIMEOUT_MS [MIN_SEQUENCE]
//
// dht: a js-libp2p node with @libp2p/kad-dht (client mode, the /ipfs/kad/1.0.0 protocol, the
// `ipns` package's validator and selector, as Helia's routing uses them) dials the peer, waits
// until the peer is in its routing table, and runs `dht.get(routingKey)`: the record comes
// from GET_VALUE under the binary key, and kad-dht validates it before yielding it.
// pubsub: @libp2p/gossipsub subscribes to the IPNS-over-PubSub topic `/record/` +
// base64url(routingKey), prints {"ready":true} once the peer knows it is subscribed, and
// waits for a record message with a sequence of at least MIN_SEQUENCE (default 0; older ones,
// e.g. replayed by gossip, are logged and skipped; the test makes the peer publish then).
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
import { unmarshalIPNSRecord } from 'ipns'
import { ipnsSelector } from 'ipns/selector'
import { ipnsValidator } from 'ipns/validator'
import { createLibp2p } from 'libp2p'

const [mode, peerAddr, routingKeyHex, timeoutText, minSequence] = process.argv.slice(2)
const routingKey = Uint8Array.from(Buffer.from(routingKeyHex, 'hex'))
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

async function viaDht (node, peerId) {
  const dht = node.services.dht
  while (dht.routingTable.size === 0) {
    if (signal.aborted) throw new Error(`peer ${peerId} never entered the DHT routing table`)
    await sleep(100)
  }
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
  const out = mode === 'pubsub' ? await viaPubsub(node, peerId) : await viaDht(node, peerId)
  say(out)
  code = 0
} catch (err) {
  say({ ok: false, error: `${err.name}: ${err.message}` })
} finally {
  await node.stop()
}
process.exit(code)
