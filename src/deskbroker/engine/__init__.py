"""Background work: scans, provisioning, plan timers, statistics, retention, leak sweeps.

Everything is a row claimed by lease, so work survives restarts and spreads over a
cluster of brokers sharing one database.
"""
