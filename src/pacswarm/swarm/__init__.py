"""The swarm: nodes announce what they verified, fetch from each other, audit and seed.

Peers are sources like mirrors (:mod:`pacswarm.fetch`): what they send is admitted by the
same verification. This package holds what only a swarm needs: the wire protocol, the
announcement cache, access rules, reputation, audits and seeding.
"""
