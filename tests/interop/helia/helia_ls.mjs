// Lists directories and fetches files *by path* from a trustless gateway with Helia's own
// UnixFS (@helia/unixfs ls/cat with {path}): the independent reader of pacswarm's repo folders
// (tests/interop/test_folder_helia.py). Helia walks the directories and HAMT shards itself,
// asking the gateway for single raw blocks (@helia/trustless-gateway-client), and checks every
// block against its CID: what it lists and writes is what the DAG says, not what we claim.
//
// stdin:  {"url": GATEWAY, "root": CID, "ls": [PATH, ...], "cat": [[PATH, OUTFILE], ...],
//          "timeout_ms": N}
// stdout: {"ls": {PATH: [[name, cid, tsize], ...]}, "cat": {PATH: bytes written}}
// any failure: exit 1 with the error on stderr.

import './polyfills.mjs'

import { createWriteStream } from 'node:fs'
import { once } from 'node:events'

import { fallbackRouter } from '@helia/fallback-router'
import { trustlessGatewayBlockBroker } from '@helia/trustless-gateway-client'
import { unixfs } from '@helia/unixfs'
import { createHeliaLight } from 'helia'
import { CID } from 'multiformats/cid'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const req = JSON.parse(Buffer.concat(chunks).toString('utf8'))

// As in helia_peer.mjs: the gateway offered through a router without the "fallback"
// capability (Helia 7.1.15 otherwise waits forever for non-fallback routers).
const inner = fallbackRouter({ gateways: [req.url], shuffle: false })
const helia = createHeliaLight({
  routers: [{
    name: 'static-gateway',
    findProviders: (cid, options) => inner.findProviders(cid, options),
    toString: () => `StaticGateway(${req.url})`
  }],
  blockBrokers: [trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true })]
})
await helia.start()
const fs = unixfs(helia)
const root = CID.parse(req.root)
const signal = AbortSignal.timeout(req.timeout_ms ?? 60_000)
const out = { ls: {}, cat: {} }
try {
  for (const path of req.ls ?? []) {
    const entries = []
    for await (const entry of fs.ls(root, { path, signal })) {
      entries.push([entry.name, entry.cid.toString(), Number(entry.size)])
    }
    out.ls[path] = entries
  }
  for (const [path, file] of req.cat ?? []) {
    const sink = createWriteStream(file)
    let size = 0
    try {
      for await (const chunk of fs.cat(root, { path, signal })) {
        size += chunk.byteLength
        if (!sink.write(chunk)) await once(sink, 'drain')
      }
    } finally {
      sink.end()
      await once(sink, 'close')
    }
    out.cat[path] = size
  }
} finally {
  await helia.stop()
}
process.stdout.write(JSON.stringify(out) + '\n')
