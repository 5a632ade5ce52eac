"""Strings our notifications carry and the threading engine looks for.

Kept in one bottom module (importing nothing) so the composer that writes
them and the extractor that recognises them cannot drift apart.
"""

from __future__ import annotations

import re

# The line above which a reply by email is read; everything from it down is ours.
REPLY_ABOVE_LINE = "##- Please type your reply above this line -##"

# Header stamped on every notification, so one coming back is recognised as ours.
LOOP_HEADER = "X-Replygate-Loop"

# Our Message-IDs look like <rg.KIND.ID.RANDOM@reply-domain>.
MESSAGE_ID_PREFIX = "rg."

# A reply token's length: 26 base32 characters for its 16 random bytes, 8 for its
# 5-byte tag (``reply_token``). A log string without a "+" that is shorter holds
# neither a token nor an address, and ``redaction.redact`` returns it as it is.
TOKEN_LENGTH = 34

# Bounces come back to bounces+<notification id>@<reply domain> (VERP).
VERP_PREFIX = "bounces+"

# A notification id: url-safe, so it needs no quoting, and short enough that
# "bounces+<id>" fits the 64 octets of a local part.
NOTIFICATION_ID = re.compile(r"[A-Za-z0-9_-]{1,56}")

# Control headers that only we may set: stripped from inbound mail on arrival.
CONTROL_HEADERS = (LOOP_HEADER, "X-Replygate-Notification")
