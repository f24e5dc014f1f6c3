"""IPNS: the node's mutable name, pointing at its repo folders (issue 8).

:mod:`.cbor` and :mod:`.record` are pure (bytes in, bytes out; the clock is a parameter);
:mod:`.sequence` is the persisted sequence counter; :mod:`.names` the interface the gateway
consumes; :mod:`.publisher` signs, keeps and announces our record, :mod:`.resolver` finds
records (ours, pubsub, the DHT via :mod:`pacswarm.ipfs.dhtvalues`).
"""
