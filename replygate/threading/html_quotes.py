"""Removing quoted mail from HTML by its structure, then rendering what is left as text.

Mail clients mark the quote they insert; cutting it from the tree is surer
than guessing from the rendered text. Each rule names the client it serves.
The text rules in ``extract`` then run on the rendering, for what no markup
told apart.
"""

from __future__ import annotations

import re

from lxml import etree
from lxml import html as lxml_html

# Elements rendered as line breaks around their text.
_BLOCK = frozenset(
    "address article aside blockquote dd div dl dt fieldset figure footer form h1 h2 h3 h4 h5 h6"
    " header hr li main nav ol p pre section table tbody thead tfoot tr ul".split()
)
_SKIP = frozenset(("head", "script", "style", "title", "template"))

# Class names clients give the quote they insert: Gmail, Yahoo, Proton, Thunderbird, Zimbra, AOL.
_QUOTE_CLASSES = (
    "gmail_quote",
    "yahoo_quoted",
    "protonmail_quote",
    "moz-cite-prefix",
    "zmail_extra",
    "aolreplyhead",
    "gmail_extra",
)
# Ids of the same: Outlook's reply header, Outlook for Mac's source section, Zimbra's rule.
_QUOTE_IDS = ("divRplyFwdMsg", "OLK_SRC_BODY_SECTION", "zwchr", "appendonsend", "x_divRplyFwdMsg")


def _classes(el: etree._Element) -> list[str]:
    return (el.get("class") or "").split()


def _drop_from(el: etree._Element) -> str:
    """Remove ``el`` and every later sibling, climbing to the body; return the removed text."""
    removed: list[str] = []
    node = el
    while node is not None and node.tag not in ("body", "html"):
        parent = node.getparent()
        if parent is None:
            break
        siblings = list(parent)
        idx = siblings.index(node)
        for sib in siblings[idx:]:
            removed.append(render(sib))
            tail = sib.tail
            sib.tail = None
            parent.remove(sib)
            if tail and tail.strip():
                removed.append(tail)
        node = parent
    return "\n".join(removed)


def _is_border_top_separator(el: etree._Element) -> bool:
    """Outlook's reply header: a div whose style draws a thin top border above From:/Sent:."""
    style = (el.get("style") or "").lower().replace(" ", "")
    return "border-top:solid" in style and ("padding:3.0pt" in style or "padding-top" in style)


def find_quote_start(root: etree._Element) -> tuple[etree._Element | None, str]:
    """The first element where a client's inserted quote begins, and the rule's name."""
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        classes = _classes(el)
        for name in _QUOTE_CLASSES:
            if name in classes:
                # Gmail keeps its own signature inside gmail_extra; only the quote goes.
                if name == "gmail_extra" and not el.cssselect(".gmail_quote"):
                    continue
                if name == "gmail_extra":
                    return el.cssselect(".gmail_quote")[0], "html:gmail_quote"
                return el, f"html:{name}"
        if el.get("id") in _QUOTE_IDS:
            return el, f"html:{el.get('id')}"
        # Apple Mail and Thunderbird: <blockquote type="cite"> holds the quoted message.
        if el.tag == "blockquote" and el.get("type") == "cite":
            return el, "html:blockquote_cite"
        if el.tag == "div" and _is_border_top_separator(el):
            return el, "html:border_top"
    return None, ""


def parse(markup: str) -> etree._Element:
    """Parse mail HTML leniently (lxml's HTML parser never raises on tag soup)."""
    try:
        root = lxml_html.document_fromstring(markup)
    except (etree.ParserError, ValueError):
        root = lxml_html.document_fromstring("<html><body></body></html>")
    return root


def split_html(markup: str) -> tuple[str, str, str]:
    """``(text of the reply part, text of the quote, rule name)`` for a mail's HTML."""
    root = parse(markup)
    start, rule = find_quote_start(root)
    quote = ""
    if start is not None:
        # Thunderbird's cite prefix sits just before the blockquote it introduces.
        quote = _drop_from(start)
    return render(root), quote, rule


def render(root: etree._Element) -> str:
    """Text of an element: block elements and ``<br>`` become line breaks, nothing is guessed.

    Walked with ``iterwalk`` rather than recursion, so deeply nested quotes cost no stack.
    """
    out: list[str] = []
    skipping = 0
    for event, el in etree.iterwalk(root, events=("start", "end")):
        tag = el.tag if isinstance(el.tag, str) else ""
        if event == "start":
            if tag in _SKIP or not tag:
                skipping += 1
                continue
            if skipping:
                continue
            if tag in _BLOCK or tag == "br":
                out.append("\n")
            if el.text:
                out.append(el.text)
        else:
            if tag in _SKIP or not tag:
                skipping -= 1
            elif not skipping and tag in _BLOCK:
                out.append("\n")
            if not skipping and el is not root and el.tail:
                out.append(el.tail)
    return _collapse("".join(out))


_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANKS = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")


def _collapse(text: str) -> str:
    """HTML whitespace: runs of spaces collapse, at most one blank line between blocks."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip("\n")


def html_to_text(markup: str) -> str:
    return render(parse(markup))
