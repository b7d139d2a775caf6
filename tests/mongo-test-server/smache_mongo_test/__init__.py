"""Pieces of smache's test-only MongoDB-wire server (see ``../server.py``).

Nothing here is a MongoDB substitute: it fills the gaps of mongoeco's wire
server that smache's integration tests run into (change streams above all).
"""
