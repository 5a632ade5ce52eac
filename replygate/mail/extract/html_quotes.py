"""Removing quoted mail from HTML by its structure, then rendering what is left as text.

Mail clients mark the quote they insert; cutting it from the tree is surer
than guessing from the rendered text. Each rule names the client it serves.
The text rules in ``extract`` then run on the rendering, for what no markup
told apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from copy import deepcopy

from lxml import etree
from lxml import html as lxml_html
from lxml.html import HtmlElement

from replygate.mail.extract import quote_headers as qh

# Elements rendered as line breaks around their text.
_BLOCK = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "thead",
        "tfoot",
        "tr",
        "ul",
    ]
)
_SKIP = frozenset(("head", "script", "style", "title", "template"))

# Class names clients give the quote they insert: Gmail, Yahoo, Proton, Thunderbird, Zimbra, AOL.
_QUOTE_CLASSES = (
    "gmail_quote",
    "yahoo_quoted",
    "protonmail_quote",
    "zmail_extra",
    "aolreplyhead",
    "gmail_extra",
)
# Ids of the same: Outlook's reply header, Outlook for Mac's source section, Zimbra's rule.
_QUOTE_IDS = ("divRplyFwdMsg", "OLK_SRC_BODY_SECTION", "zwchr", "appendonsend", "x_divRplyFwdMsg")


def _classes(el: HtmlElement) -> list[str]:
    return (el.get("class") or "").split()


def _drop_from(el: HtmlElement) -> str:
    """Remove ``el`` and every later sibling, climbing to the body; return the removed text."""
    removed: list[str] = []
    node = el
    first = True
    while node is not None and node.tag not in ("body", "html"):
        parent = node.getparent()
        if parent is None:
            break
        siblings = list(parent)
        # The quote's own element goes; above it, only what follows the branch we came up.
        idx = siblings.index(node) + (0 if first else 1)
        first = False
        for sib in siblings[idx:]:
            removed.append(render(sib))
            tail = sib.tail
            sib.tail = None
            parent.remove(sib)
            if tail and tail.strip():
                removed.append(tail)
        node = parent
    return "\n".join(removed)


def _is_border_top_separator(el: HtmlElement) -> bool:
    """Outlook's reply header: a div whose style draws a thin top border above From:/Sent:."""
    style = (el.get("style") or "").lower().replace(" ", "")
    return "border-top:solid" in style and ("padding:3.0pt" in style or "padding-top" in style)


def find_quote_start(
    root: HtmlElement, check: Callable[[], None] | None = None
) -> tuple[HtmlElement | None, str]:
    """The first element where a client's inserted quote begins, and the rule's name.

    ``check`` is called every few thousand elements (the time budget).
    """
    for seen, el in enumerate(root.iter()):
        if check is not None and seen % _CHECK_EVERY == _CHECK_EVERY - 1:
            check()
        if not isinstance(el.tag, str):
            continue
        # Our own notification, named by its Message-ID in a cite="mid:…" or data attribute.
        if _names_own_message_id(el):
            return _with_attribution(el), "html:own_message_id"
        classes = _classes(el)
        # A lone blockquote.gmail_quote with no attribution is a quote pasted on purpose.
        if el.tag == "blockquote" and "gmail_quote" in classes and not _attributed(el):
            continue
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
        if el.tag == "div" and _is_border_top_separator(el):
            return el, "html:border_top"
        # Hotmail: the quote sits in a block that a rule followed by "From:"/"Date:" opens.
        if el.tag == "hr" and _RE_FIELD.match((el.tail or "") + _next_text(el)):
            parent = el.getparent()
            return (parent if parent is not None and parent.tag != "body" else el), "html:hr"
    return None, ""


def _names_own_message_id(el: HtmlElement) -> bool:
    return any(
        "rg." in value.lower() and qh.RE_OWN_MESSAGE_ID.search(value[: qh.MAX_ID_LINE])
        for value in el.attrib.values()
    )


def _with_attribution(el: HtmlElement) -> HtmlElement:
    """``el``, or the attribution line ("On … wrote:") just before it when there is one."""
    prev = el.getprevious()
    while prev is not None and prev.tag == "br" and not (prev.tail or "").strip():
        prev = prev.getprevious()
    if prev is None or not isinstance(prev.tag, str) or (prev.tail or "").strip():
        return el
    if {"moz-cite-prefix", "gmail_attr"} & set(_classes(prev)):
        return prev
    text = " ".join(prev.text_content().split())
    # In any language, an attribution is a short line ending in a colon just above the quote.
    attribution = len(text) <= qh.MAX_HEADER_LINE and text.endswith((":", "："))
    return prev if attribution or qh.is_wrote_header(text) else el


_RE_FIELD = re.compile(r"^\s*(?:from|date|de|von|van|da|od|от)\s*:", re.I)


def _next_text(el: HtmlElement) -> str:
    nxt = el.getnext()
    # Comments and processing instructions between elements carry no text of their own.
    return nxt.text_content()[:40] if nxt is not None and isinstance(nxt.tag, str) else ""


def _attributed(el: HtmlElement) -> bool:
    """Whether the text just before ``el`` is an attribution line ending in a colon."""
    prev = el.getprevious()
    while prev is not None and not isinstance(prev.tag, str):
        prev = prev.getprevious()  # a comment between them is not the attribution
    text: str | None
    if prev is not None:
        text = prev.text_content()
    else:  # the first child: the attribution is its parent's text before it
        parent = el.getparent()
        text = parent.text if parent is not None else ""
    return (text or "").rstrip().endswith((":", "："))


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def parse(markup: str) -> HtmlElement:
    """Parse mail HTML leniently (lxml's HTML parser never raises on tag soup)."""
    # lxml refuses a str that still carries an encoding declaration (Hotmail sends one).
    markup = _XML_DECLARATION.sub("", markup, count=1)
    if not markup.strip():
        markup = "<html><body></body></html>"
    try:
        root = lxml_html.document_fromstring(markup)
    except (etree.ParserError, ValueError):
        root = lxml_html.document_fromstring("<html><body></body></html>")
    return root


def split_html(markup: str, check: Callable[[], None] | None = None) -> tuple[str, str, str]:
    """``(text of the reply part, text of the quote, rule name)`` for a mail's HTML.

    A client's quote container is cut with everything after it; a quote the
    client forwarded whole, with nothing above it, is kept. ``<blockquote>``
    content is rendered with ``>`` prefixes so the text rules decide about it
    (inline answers, bottom posting) exactly as they do for plain mail.
    ``check`` is called while rendering and may raise to stop when time is up.
    """
    root = parse(markup)
    start, rule = find_quote_start(root, check)
    quote = ""
    if start is not None:
        kept = deepcopy(root)
        quote = _drop_from(start)
        if rule == "html:hr" and start.tag != "hr" and not render(root).strip():
            # The rule shares its block with the reply: cut at the rule itself instead.
            root = deepcopy(kept)
            hr = next(
                el for el in root.iter("hr") if _RE_FIELD.match((el.tail or "") + _next_text(el))
            )
            quote = _drop_from(hr)
        if (
            rule != "html:own_message_id"
            and not render(root).strip()
            and _starts_with_forward(quote)
        ):
            root, quote, rule = kept, "", ""
    for lone in root.iter("blockquote"):
        if "gmail_quote" in _classes(lone) and not _attributed(lone):
            lone.tag = "div"  # pasted on purpose: ordinary text, not a quote
    for cite in root.iter("div"):
        # Thunderbird's attribution sits in its own div above the blockquote it introduces.
        if "moz-cite-prefix" in _classes(cite):
            rule = rule or "html:moz-cite-prefix"
    if not _has_text_outside_blockquotes(root):
        return render(root, check=check), quote, "html:quote_only"
    return render(root, quote_prefix=True, check=check), quote, rule


def _starts_with_forward(text: str) -> bool:
    first = next((line for line in text.split("\n") if line.strip()), "")
    return "forwarded message" in first.lower() or "message transféré" in first.lower()


def _has_text_outside_blockquotes(root: HtmlElement) -> bool:
    """True unless every word is inside a blockquote (then the quote is all there is)."""
    depth = 0
    for event, el in etree.iterwalk(root, events=("start", "end")):
        is_quote = el.tag == "blockquote"
        if event == "start":
            depth += is_quote
            if (
                not depth
                and isinstance(el.tag, str)
                and el.tag not in _SKIP
                and (el.text or "").strip()
            ):
                return True
        else:
            depth -= is_quote
            if not depth and el is not root and (el.tail or "").strip():
                return True
    return False


def render(
    root: HtmlElement, *, quote_prefix: bool = False, check: Callable[[], None] | None = None
) -> str:
    """Text of an element: block elements and ``<br>`` become line breaks, nothing is guessed.

    Walked with ``iterwalk`` rather than recursion, so deeply nested quotes cost no stack;
    ``check`` is called every few thousand elements (the time budget).
    """
    if not isinstance(root.tag, str):
        return ""  # a comment or processing instruction renders as nothing
    out: list[str] = []
    skipping = 0
    for seen, (event, el) in enumerate(etree.iterwalk(root, events=("start", "end"))):
        if check is not None and seen % _CHECK_EVERY == _CHECK_EVERY - 1:
            check()
        tag = el.tag if isinstance(el.tag, str) else ""
        if event == "start":
            if tag in _SKIP or not tag:
                skipping += 1
                continue
            if skipping:
                continue
            if quote_prefix and tag == "blockquote":
                out.append(_OPEN_QUOTE)
            elif tag in _BLOCK or tag == "br":
                out.append("\n")
            if el.text:
                out.append(el.text)
        else:
            if tag in _SKIP or not tag:
                skipping -= 1
            elif not skipping and quote_prefix and tag == "blockquote":
                out.append(_CLOSE_QUOTE)
            elif not skipping and tag in _BLOCK:
                out.append("\n")
            if not skipping and el is not root and el.tail:
                out.append(el.tail)
    text = "".join(out)
    return _prefix_quotes(_collapse(text)) if quote_prefix else _collapse(text)


# Markers for blockquote nesting in the rendering, replaced by "> " prefixes afterwards.
_OPEN_QUOTE, _CLOSE_QUOTE = "\n\x01\n", "\n\x02\n"
_CHECK_EVERY = 4096
# Quote levels drawn as "> " before a line. The text rules ask only whether a line is
# quoted; drawing every level cost memory hundreds of times the mail's size (lines of
# one word 250 <blockquote>s deep), so deeper levels are drawn as this many.
MAX_DRAWN_DEPTH = 4
_PREFIXES = ["> " * n for n in range(MAX_DRAWN_DEPTH + 1)]


def _prefix_quotes(text: str) -> str:
    out: list[str] = []
    depth = 0
    for line in text.split("\n"):
        if line == "\x01":
            depth += 1
        elif line == "\x02":
            depth = max(0, depth - 1)
        elif depth and line.strip():
            out.append(_PREFIXES[min(depth, MAX_DRAWN_DEPTH)] + line)
        else:
            out.append(line)
    return _BLANKS.sub("\n\n", "\n".join(out)).strip("\n")


_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANKS = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")


def _collapse(text: str) -> str:
    """HTML whitespace: runs of spaces collapse, at most one blank line between blocks."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip("\n")


def html_to_text(markup: str) -> str:
    return render(parse(markup))
