"""``python -m diffmix``: the same command line as the ``diffmix`` script."""

from diffmix.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
