"""Allow ``python -m replygate``."""

from replygate.cli import main

main()
