"""``python -m jaxce``: the command-line entry point."""

from jaxce.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
