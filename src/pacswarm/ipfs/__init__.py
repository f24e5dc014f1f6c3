"""The embedded IPFS node: CIDs, UnixFS import, blockstore, CAR, gateway, libp2p.

Pure formats (:mod:`.cid`, :mod:`.dagpb`, :mod:`.unixfs`, :mod:`.car`) are free of I/O; the
blockstore, gateway and libp2p host are the edges.
"""
