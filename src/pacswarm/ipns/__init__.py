"""IPNS: the node's mutable name, pointing at its repo folders (issue 8).

:mod:`.cbor` and :mod:`.record` are pure (bytes in, bytes out; the clock is a parameter);
:mod:`.sequence` is the one piece of I/O, the persisted sequence counter.
"""
