"""The gateway (``deskbroker gateway``): carries desktop traffic into private networks.

A WebSocket relay for the HTML5 viewers (noVNC, SSH in xterm.js, RDP through an external
guacd) and TCP port forwards for native viewers. It holds no database and trusts nothing
but tickets signed with the key it shares with the brokers (``deskbroker.domain.tickets``).
It imports neither the store nor the API: see docs/gateway.md.
"""
