"""``python -m asyncfetch``: the same command as the ``asyncfetch`` script."""

from asyncfetch.cli import main

if __name__ == "__main__":
    main()
