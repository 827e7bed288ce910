"""deskbroker-agent: the desktop agent of the deskbroker connection broker.

Standard library only, so that it installs on any desktop without the broker. It reports
the sessions it sees (systemd-logind, utmp, Xvnc viewers, X idle time) to the broker's
agent API, queues them on disk while the broker is unreachable, and carries out the
actions the broker asks for (log off, lock, message), which it pulls with its heartbeats.
"""

__version__ = "0.1.0"
