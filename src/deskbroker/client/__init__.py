"""The user side: what the ``deskbroker`` CLI runs against a broker over HTTP."""
