"""The fetch pipeline: every byte that enters the cache, from any source, comes through here.

See docs/architecture.md ("The fetch pipeline") for how a request travels through it.
"""
