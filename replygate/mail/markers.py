"""Strings our notifications carry and the threading engine looks for.

Kept in one bottom module (importing nothing) so the composer that writes
them and the extractor that recognises them cannot drift apart.
"""

from __future__ import annotations

# The line above which a reply by email is read; everything from it down is ours.
REPLY_ABOVE_LINE = "##- Please type your reply above this line -##"

# Header stamped on every notification, so one coming back is recognised as ours.
LOOP_HEADER = "X-Replygate-Loop"

# Our Message-IDs look like <rg.KIND.ID.RANDOM@reply-domain>.
MESSAGE_ID_PREFIX = "rg."

# Control headers that only we may set: stripped from inbound mail on arrival.
CONTROL_HEADERS = (LOOP_HEADER, "X-Replygate-Notification")
