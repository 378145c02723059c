"""``python -m memring``: the same command line as ``memring``."""

from memring.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
