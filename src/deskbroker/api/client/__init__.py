"""The user-facing API: log in, see desktops, connect, release."""
