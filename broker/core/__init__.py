"""The protocol-neutral broker core: exchanges, queues, topology, routing, policies.

It knows nothing of sockets, frames or HTTP; wire/, http/ and cli/ sit above it.
"""
