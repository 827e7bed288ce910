"""``python -m deskbroker_agent`` and the zipapp's entry point."""

from deskbroker_agent.service import main

if __name__ == "__main__":
    raise SystemExit(main())
