// Helia's own IPNS code (the npm `ipns` package) judging a record pacswarm built.
//
//   node ipns_check.mjs RECORD_FILE ROUTING_KEY_HEX [PRIVATE_KEY_HEX VALUE SEQ VALIDITY TTL_NS]
//
// Runs `ipnsValidator(routingKey, record)` (size, key, signatureV2, V1/V2 agreement, expiry)
// and `unmarshalIPNSRecord`, checks signatureV1 with the name's key, and, given the private
// key (libp2p protobuf, hex) and the record's fields, builds Helia's own record for the same
// inputs so the caller can compare bytes (ed25519 signatures are deterministic).
// Prints one JSON object on stdout; exit 0 if valid, 1 if Helia refused the record.
import { readFileSync } from 'node:fs'
import { privateKeyFromProtobuf, publicKeyFromMultihash } from '@libp2p/crypto/keys'
import {
  createIPNSRecordWithExpiration,
  marshalIPNSRecord,
  multihashFromIPNSRoutingKey,
  unmarshalIPNSRecord
} from 'ipns'
import { ipnsValidator } from 'ipns/validator'

const [recordFile, routingKeyHex, privateKeyHex, value, seq, validity, ttlNs] = process.argv.slice(2)
const record = new Uint8Array(readFileSync(recordFile))
const routingKey = Uint8Array.from(Buffer.from(routingKeyHex, 'hex'))
const out = {}
try {
  await ipnsValidator(routingKey, record)
  const parsed = unmarshalIPNSRecord(record)
  out.valid = true
  out.value = parsed.value
  out.sequence = parsed.sequence.toString()
  out.validity = parsed.validity
  out.ttl = parsed.ttl.toString()
  out.v1 = parsed.signatureV1 != null
  if (parsed.signatureV1 != null) {
    const key = publicKeyFromMultihash(multihashFromIPNSRoutingKey(routingKey))
    const v1Data = Buffer.concat([Buffer.from(parsed.value), Buffer.from(parsed.validity), Buffer.from('EOL')])
    out.signatureV1Valid = await key.verify(v1Data, parsed.signatureV1)
  }
} catch (err) {
  out.valid = false
  out.error = `${err.name}: ${err.message}`
}
if (privateKeyHex != null) {
  const key = privateKeyFromProtobuf(Buffer.from(privateKeyHex, 'hex'))
  const own = await createIPNSRecordWithExpiration(key, value, BigInt(seq), validity, { ttlNs: BigInt(ttlNs), v1Compatible: true })
  out.heliaRecordHex = Buffer.from(marshalIPNSRecord(own)).toString('hex')
}
process.stdout.write(JSON.stringify(out) + '\n')
process.exit(out.valid ? 0 : 1)
