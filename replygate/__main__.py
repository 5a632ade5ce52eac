"""Allow ``python -m replygate``."""

from replygate.cli import main

if __name__ == "__main__":  # not again in a child process started with ``spawn``
    main()
