// Builds a UnixFS directory with Helia's importer (what @helia/unixfs's addAll runs), with
// kubo's settings, and prints its root CID: the independent expectation for pacswarm's
// src/pacswarm/ipfs/unixfsdir.py (tests/interop/test_unixfsdir_helia.py).
//
// stdin: {"files": [[name, content_b64], ...]}
// stdout: {"root": CID, "blocks": {CID: block_b64}} (blocks: the directory's own dag-pb nodes)
//
// kubo's settings: CIDv1, raw leaves, 256 KiB chunks, balanced layout of 174 links, and a
// directory sharded (fanout 256) once its links' estimated bytes exceed 262,144
// ('links-bytes', the importer's default, kubo's rule).

import './polyfills.mjs'

import { MemoryBlockstore } from 'blockstore-core'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const KUBO_SETTINGS = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: 262_144 }),
  layout: balanced({ maxChildrenPerNode: 174 }),
  wrapWithDirectory: true,
  shardSplitThresholdBytes: 262_144,
  shardSplitStrategy: 'links-bytes',
  shardFanoutBits: 8
}

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const { files } = JSON.parse(Buffer.concat(chunks).toString('utf8'))
const blockstore = new MemoryBlockstore()
const source = files.map(([name, b64]) => ({
  path: name,
  content: Buffer.from(b64, 'base64')
}))
let root = null
const dirBlocks = {}
for await (const entry of importer(source, blockstore, KUBO_SETTINGS)) {
  if (entry.path === '') root = entry.cid
}
// the directory's own nodes: walk dag-pb blocks from the root (files' nodes are not needed)
const { decode } = await import('@ipld/dag-pb')
const { UnixFS } = await import('ipfs-unixfs')
const todo = [root]
while (todo.length > 0) {
  const cid = todo.pop()
  if (cid.code !== 0x70) continue
  let bytes = blockstore.get(cid)
  if (bytes instanceof Promise) bytes = await bytes
  if (!(bytes instanceof Uint8Array)) {
    const parts = []
    for await (const part of bytes) parts.push(part)
    bytes = Buffer.concat(parts)
  }
  const node = decode(bytes)
  const type = UnixFS.unmarshal(node.Data).type
  if (type !== 'directory' && type !== 'hamt-sharded-directory') continue
  dirBlocks[cid.toString()] = Buffer.from(bytes).toString('base64')
  for (const link of node.Links) todo.push(link.Hash)
}
process.stdout.write(JSON.stringify({ root: root.toString(), blocks: dirBlocks }) + '\n')
