"""Recognising the lines that introduce quoted mail, in the languages our clients write.

Every test here is applied to one line (or two or three lines joined, for
headers a client wrapped), and every line longer than ``MAX_HEADER_LINE`` is
rejected before any pattern runs, so the cost stays linear in the body.

Rules for an attribution ("On <date>, <name> wrote:") and its translations
(the languages Gmail, Outlook, Apple Mail and Thunderbird are localised into):

1. a wrote-verb before a final colon, and evidence (a digit or an address);
   without evidence, an opener word ("On", "Le", "Am", "Op", "Στις", …) and
   only capitalised words up to the verb ("On Mon, Dana Staff wrote:"), so
   prose stays prose ("On Thursday. Dana wrote:", "On Monday I told you
   what she wrote:");
2. the same without the colon when an opener and evidence are there and the
   line ends with the verb or with an address ("Am … schrieb X <x@y>");
3. a date or time, then an address and a colon closing the line
   ("пт, 3 мая 2024 г. в 09:12, X <x@y>:", "09:12, 3 May 2024, X <x@y>:");
   a numeric date before the address needs no colon ("2014-10-17 11:28 X <x@y>");
4. the Chinese, Japanese and Korean forms ("…写道：", "…님이 작성:").

Header blocks: a From (or Date) field and one more known field within a few
lines, the field names bold or not (``**De :**``, ``** De : **``); a lone
From field whose value is only an address, with text above it, a blank
line under it and more below; rules of ``_``, ``-`` or ``=`` above them.
"""

from __future__ import annotations

import regex as re

from replygate.mail.markers import MESSAGE_ID_PREFIX

# Real quote headers are short; anything longer is prose (and expensive to scan).
MAX_HEADER_LINE = 400

# Verbs of "X wrote:" in the languages we support (en fr de es it pt nl sv no da pl ru uk ...).
WROTE_VERBS = (
    r"wrote|writes|sent|a\s+écrit|écrit|schrieb|escribió|escribio|ha\s+scritto|scrisse"
    r"|escreveu|schreef|het\s+volgende\s+geschreven|skrev(?:\s+følgende)?|napisał\(a\)|napisał"
    r"|napisała|pisze|написал\(а\)|написала|написал|пишет|написав\(ла\)|написав|написала"
    r"|пише|kirjoitti|írta|napsal\(a\)|napsala|napsal|napísal\(a\)|napísal|đã\s+viết|yazdı"
    r"|va\s+escriure|escribieron|escreveram|a\s+scris|έγραψε|έγραψαν|geschreven|kirjutas"
    r"|rašė|rakstīja|написа|je\s+napisao|je\s+napisala|je\s+napisal\(a\)|menulis"
    r"|كتب|كتبت|כתב\(ה\)|כתב/ה|כתבה|כתב"
)

# Words a quote header opens with ("On", "Le", "Am", "El", "Il giorno", "Em", "Op", "Den", ...).
_OPENERS = (
    r"On|Le|Am|El|Il(?:\s+giorno)?|Em|Op|Den|Dnia|W\s+dniu|Vào|Pe|Dne|På|От|Στις|Στο"
    r"|في|Pada"
)

# "On <date>, <name> wrote:" and its translations: a colon ends the line, a wrote-verb precedes it.
RE_WROTE_TAIL = re.compile(
    rf"(?:^|[\s,(\"'])(?:{WROTE_VERBS})(?:\s(?:[^:：]|:\d){{0,80}})?\s*[:：]$", re.I
)

# Hungarian Gmail's "X <x@y> ezt írta (időpont: 2024. máj. 3., P, 9:12):": the date in brackets.
RE_WROTE_PAREN = re.compile(rf"(?:^|\s)(?:{WROTE_VERBS})\s*\([^()]{{1,80}}\)\s*[:：]$", re.I)

# A line ending with a wrote-verb and no colon ("On … Dana <d@x> wrote").
RE_WROTE_END = re.compile(rf"(?:^|\s)(?:{WROTE_VERBS})$", re.I)

# "On Mon, Dana Staff wrote:": an opener, capitalised words and commas only, the verb.
RE_OPENER_NAME_WROTE = re.compile(
    rf"^(?:{_OPENERS})(?:,?\s+\p{{Lu}}[\p{{L}}'’-]*)+,?\s+(?:{WROTE_VERBS})\s*[:：]$"
)

# A header that opens with a known word ("On ...", "Am ...") and contains a wrote-verb.
RE_OPENER = re.compile(rf"^(?:{_OPENERS})\b", re.I)

# Japanese and Chinese headers: "…のメッセージ:", "…さんは書きました:", "在…写道：", "…寫道：".
RE_CJK_WROTE = re.compile(
    r"(?:写道|寫道|のメッセージ|のメール|は書きました|が書きました|書きました|님이\s*작성|님이\s*씀|\s작성)\s*[:：]?$"
)

# Something that makes "… wrote:" a header rather than prose: a digit (date) or an address.
RE_HEADER_EVIDENCE = re.compile(r"[0-9@٠-٩]|&lt;")

# A date or a time somewhere in a line (a year, "9:12", "9.12", Arabic-Indic digits).
RE_DATE_OR_TIME = re.compile(r"\b(?:19|20)\d{2}\b|\b\d{1,2}[:.]\d{2}\b|[٠-٩]{1,2}:[٠-٩]{2}|\d년")

# An address closing a line, with or without a colon: "<x@y>:", "(x@y)", "&lt;x@y&gt;:".
RE_TRAILING_ADDRESS = re.compile(
    r"(?:<\s*[^<>\s]+@[^<>\s]+\s*>|\(<?[^()\s]+@[^()\s]+?>?\)|&lt;[^&\s]+@[^&\s]+&gt;)\s*[:：]?$"
)

# "-----Original Message-----" and its translations, dashes optional on one side.
RE_ORIGINAL_MESSAGE = re.compile(
    r"^\s*[-_=*]{2,}\s*(?:original\s+message|original\s+e-?mail|ursprüngliche\s+nachricht"
    r"|originalnachricht|message\s+d'origine|mensaje\s+original|messaggio\s+originale"
    r"|mensagem\s+original|oorspronkelijk\s+bericht|origineel\s+bericht"
    r"|ursprungligt\s+meddelande|opprinnelig\s+melding|oprindelig\s+meddelelse"
    r"|original\s+meddelelse|wiadomość\s+oryginalna|oryginalna\s+wiadomość"
    r"|исходное\s+сообщение|оригинальное\s+сообщение|原始邮件|原始郵件|元のメッセージ"
    r"|reply\s+message|original\s+besked|original-nachricht|original-meldung"
    r"|alkuperäinen\s+viesti|eredeti\s+üzenet|mesaj\s+original|původní\s+zpráva"
    r"|αρχικό\s+μήνυμα|orijinal\s+ileti|missatge\s+original|원본\s+메시지)\s*[-_=*]*\s*$",
    re.I,
)

# A forwarded message's banner ("----- Forwarded message -----", "Begin forwarded message:").
RE_FORWARD = re.compile(
    r"^\s*(?:[-_=*]{2,}\s*(?:forwarded\s+message|weitergeleitete\s+nachricht|message\s+transféré"
    r"|mensaje\s+reenviado|messaggio\s+inoltrato|mensagem\s+encaminhada|doorgestuurd\s+bericht"
    r"|vidarebefordrat\s+meddelande|przekazana\s+wiadomość|пересылаемое\s+сообщение"
    r"|переслане\s+повідомлення)\s*[-_=*]*"
    r"|(?:begin\s+)?forwarded\s+message\s*:|anfang\s+der\s+weitergeleiteten\s+nachricht\s*:"
    r"|weitergeleitete\s+nachricht\s*:|début\s+du\s+message\s+réexpédié\s*:"
    r"|message\s+transféré\s*:|inicio\s+del\s+mensaje\s+reenviado\s*:|mensaje\s+reenviado\s*:"
    r"|inizio\s+messaggio\s+inoltrato\s*:|messaggio\s+inoltrato\s*:"
    r"|begin\s+doorgestuurd\s+bericht\s*:|doorgestuurd\s+bericht\s*:"
    r"|início\s+da\s+mensagem\s+(?:re)?encaminhada\s*:|mensagem\s+(?:re)?encaminhada\s*:"
    r"|vidarebefordrat\s+(?:brev|meddelande)\s*:|videresendt\s+(?:besked|melding|e-post)\s*:"
    r"|początek\s+przekazywanej\s+wiadomości\s*:|przekazana\s+wiadomość\s*:"
    r"|начало\s+переадресованного\s+сообщения\s*:|пересланное\s+сообщение\s*:"
    r"|välitetty\s+viesti\s*:|továbbított\s+üzenet\s*:|mesaj\s+redirecționat\s*:"
    r"|přeposlaná\s+zpráva\s*:|προωθημένο\s+μήνυμα\s*:|iletilen\s+ileti\s*:"
    r"|missatge\s+reenviat\s*:|転送されたメッセージ\s*:|전달된\s+메시지\s*:"
    r"|以下是转发的邮件\s*[:：]|开始转发的邮件\s*[:：]|轉寄的郵件\s*[:：]|رسالة\s+معاد\s+توجيهها\s*:)\s*$",
    re.I,
)

# Android/K-9 style "---- On <date>, <name> wrote ----" with dashes around.
RE_DASHED_WROTE = re.compile(rf"^\s*-{{2,}}.*\b(?:{WROTE_VERBS})\b.*-{{2,}}\s*$", re.I)

# Any short title between dashes ("-----Antwort Nachricht-----"): how clients in every
# language mark where the previous message starts.
RE_DASHED_TITLE = re.compile(r"^\s*-{3,}\s*[^\W\d_][\w']{1,25}(?:[ -][\w']{1,25})?\s*-{3,}\s*$")

# Field names of an Outlook-style header block, per language (From / Sent / To / Subject / ...).
_FROM = (
    r"from|von|de|da|van|från|fra|od|от|від|lähettäjä|feladó|od\s+kogo|发件人|發件人|寄件者"
    r"|差出人|từ|kimden"
)
_OTHER_FIELDS = (
    r"sent|date|to|cc|bcc|subject|reply-to|gesendet|datum|an|betreff|envoyé|date\s+d'envoi|à|a"
    r"|objet|enviado|enviada|fecha|para|asunto|inviato|data|oggetto|enviado\s+em|assunto"
    r"|verzonden|aan|onderwerp|skickat|till|ämne|sendt|til|emne|wysłano|wysłane|do|temat"
    r"|отправлено|дата|кому|тема|надіслано|кому|тема|发送时间|發送時間|日期|收件人|主题|主旨"
    r"|送信日時|宛先|件名|gửi|đến|chủ\s+đề|ngày|lähetetty|vastaanottaja|aihe|tárgy|címzett"
    r"|sent\s+on"
)

# One field of such a block: optional bold/quote decoration (spaced too: "** De : **"),
# the name, a colon.
RE_FROM_FIELD = re.compile(rf"^\s*(?:[*_]{{1,2}}\s*)?(?:{_FROM})\s*[*_]{{0,2}}\s*[:：]", re.I)
RE_OTHER_FIELD = re.compile(
    rf"^\s*(?:[*_]{{1,2}}\s*)?(?:{_OTHER_FIELDS})\s*[*_]{{0,2}}\s*[:：]", re.I
)

# A From field whose value is an address and nothing else ("From: x@y", "Von: X <x@y>").
RE_LONE_FROM = re.compile(
    rf"^\s*(?:[*_]{{1,2}}\s*)?(?:{_FROM})\s*[*_]{{0,2}}\s*[:：]\s*[*_]{{0,2}}\s*"
    r"(?:\"?[^\"<>@:]{0,60}\"?\s*<[^<>\s]+@[^<>\s]+>|\[?mailto:[^\s\]]+\]?|[^\s<>@]+@[\w-]+(?:\.[\w-]+)+)\s*$",
    re.I,
)

# A rule of underscores, dashes or equals signs that clients draw above a header block.
RE_RULE = re.compile(r"^\s*(?:_{5,}|-{5,}|={5,})\s*$")

# Such a rule glued to the field under it ("______Von: X", "-----Original Message-----From:").
RE_GLUED_RULE = re.compile(r"^(\s*(?:_{5,}|-{5,}|={5,}|-{3,}[^-]{3,40}-{3,}))(\S.*)$")


def strip_quote_prefix(line: str) -> str:
    """The line without its leading ``>`` markers (and the spaces between them)."""
    return line.lstrip(" \t>")


def is_wrote_header(text: str) -> bool:
    """True for "On <date>, <name> wrote:" and its translations (``text`` may be joined lines)."""
    text = text.strip().strip("*_").strip()
    if not text or len(text) > MAX_HEADER_LINE:
        return False
    if RE_CJK_WROTE.search(text) or is_date_address_header(text):
        return True
    if text[-1] not in ":：":
        # Dutch and Danish clients put the name after the verb and nothing else; others
        # drop the colon ("… wrote", "Am … schrieb X <x@y>") but keep a date or an address.
        if not (RE_OPENER.match(text) and re.search(rf"\b(?:{WROTE_VERBS})\b", text, re.I)):
            return False
        if text.endswith(("geschreven", "skrev")):
            return True
        return bool(
            RE_HEADER_EVIDENCE.search(text)
            and (RE_WROTE_END.search(text) or RE_TRAILING_ADDRESS.search(text))
        )
    if RE_WROTE_TAIL.search(text) or RE_WROTE_PAREN.search(text):
        if RE_HEADER_EVIDENCE.search(text):
            return True
        return bool(RE_OPENER_NAME_WROTE.match(text))
    # German/Scandinavian order: "Am <date> schrieb <name>:", verb before the name.
    return bool(
        RE_OPENER.match(text)
        and RE_HEADER_EVIDENCE.search(text)
        and re.search(rf"\b(?:{WROTE_VERBS})\b", text, re.I)
    )


# "2014-10-17 11:28 GMT+03:00 Name <addr>:", "26.06.2014, 14:41, "Name" <addr>:": a date,
# then an address closing the line, with or without a colon (Gmail locales, Yandex, mail.ru).
RE_DATE_ADDR = re.compile(
    r"^\s*(?:\w{2,4},?\s+)?\d{1,4}[-./年]\d{1,2}[-./月]\d{1,4}.{0,200}"
    r"(?:<\s*[^<>\s]+@[^<>\s]+>|\([^()\s]+@[^()\s]+\)|\S+@\S+\.\w+)\s*[:：]?$"
)
# "… от Name <addr>:" (mail.ru): the Russian "from" before a trailing address.
# Gmail's date-first attribution with no address: "2016-03-03 17:21 GMT+01:00 Some One".
RE_GMAIL_DATE_NAME = re.compile(
    r"^\s*\d{4}-\d{2}-\d{2}\s+\d{1,2}:\d{2}\s+GMT[+-]\d{1,2}:?\d{2}\s+\S.{0,100}$"
)
RE_OT_ADDR = re.compile(r"\d.{0,200}\sот\s.{0,120}<[^<>\s]+@[^<>\s]+>\s*:$")


def could_open_header(text: str) -> bool:
    """Whether a line may be the first of a wrapped header (not ordinary prose)."""
    text = text.strip().strip("*_").strip()
    return bool(RE_OPENER.match(text) or RE_HEADER_EVIDENCE.search(text) or text[:1] in "\"'<")


def is_date_address_header(text: str) -> bool:
    text = text.strip()
    if not text or len(text) > MAX_HEADER_LINE:
        return False
    return bool(
        RE_DATE_ADDR.match(text)
        or RE_OT_ADDR.search(text)
        or RE_GMAIL_DATE_NAME.match(text)
        or (
            len(text) <= 300
            and RE_TRAILING_ADDRESS.search(text)
            and text.rstrip()[-1] in ":："
            and RE_DATE_OR_TIME.search(text)
        )
    )


def is_separator(line: str) -> bool:
    """True for "-----Original Message-----" lines and dashed "---- X wrote ----" lines."""
    if len(line) > MAX_HEADER_LINE:
        return False
    return bool(
        RE_ORIGINAL_MESSAGE.match(line)
        or RE_DASHED_WROTE.match(line)
        or RE_DASHED_TITLE.match(line)
    )


def is_forward(line: str) -> bool:
    return len(line) <= MAX_HEADER_LINE and bool(RE_FORWARD.match(line))


def header_block_at(lines: list[str], i: int) -> bool:
    """True when ``lines[i]`` opens an Outlook-style block: a From (or Date) field and
    at least one more known field within the next few lines."""
    line = strip_quote_prefix(lines[i])
    if len(line) > MAX_HEADER_LINE:
        return False
    opens_with_from = bool(RE_FROM_FIELD.match(line))
    opens_with_date = not opens_with_from and bool(
        re.match(r"^\s*[*_]{0,2}(?:date|datum|fecha|data|дата|日期)\s*[*_]{0,2}\s*:", line, re.I)
    )
    if not (opens_with_from or opens_with_date):
        return False
    if opens_with_from and RE_LONE_FROM.match(line) and _between_text(lines, i):
        # A From field of nothing but an address is a header block on its own between the
        # reply and the mail it quotes, a blank line under it.
        return True
    for follower in lines[i + 1 : i + 7]:
        follower = strip_quote_prefix(follower)
        if len(follower) > MAX_HEADER_LINE:
            break
        if RE_OTHER_FIELD.match(follower) or (opens_with_date and RE_FROM_FIELD.match(follower)):
            return True
    return False


def _between_text(lines: list[str], i: int) -> bool:
    """Text above ``lines[i]``, a blank line under it and more below (within a few lines)."""
    if i + 2 >= len(lines) or lines[i + 1].strip():
        return False
    above = any(line.strip() for line in lines[max(0, i - 40) : i])
    return above and any(line.strip() for line in lines[i + 2 : i + 6])


# Where a header may begin inside a line: an opener word after a space or dashes.
RE_INNER_OPENER = re.compile(rf"(?:\s+|\s*-{{2,}}\s*)(?=(?:{_OPENERS})\s)")


def split_shared_line(line: str) -> tuple[str, str] | None:
    """``("reply", "On … wrote:")`` when a client glued its header to the reply's last line."""
    if len(line) > MAX_HEADER_LINE or not line.rstrip().endswith((":", "：")):
        return None
    if RE_OPENER.match(line.strip()) or line.lstrip().startswith(">"):
        return None
    if is_date_address_header(line):
        return None
    for m in RE_INNER_OPENER.finditer(line):
        head, rest = line[: m.start()], line[m.end() :]
        if any(ch.isalnum() for ch in head) and is_wrote_header(rest):
            return head.rstrip(" -"), rest
    return None


# One of our Message-IDs ("<rg.n.ID@reply-domain>"): bracketed, HTML-escaped, percent-encoded,
# or as the "mid:" URL (RFC 2392) clients put in a blockquote's cite attribute.
RE_OWN_MESSAGE_ID = re.compile(
    rf"(?:<|&lt;|%3C|\bmid:)\s*{re.escape(MESSAGE_ID_PREFIX)}[^\s<>@\"'%]+(?:@|%40)[\w-]+(?:\.[\w-]+)+",
    re.I,
)

# Inside a field that carries Message-IDs, ours may also be written without its brackets.
RE_OWN_BARE_ID = re.compile(
    rf"(?:^|[\s<:,;]){re.escape(MESSAGE_ID_PREFIX)}[^\s<>@]+@[\w-]+(?:\.[\w-]+)+", re.I
)

# The header fields that carry Message-IDs, as a client quotes or forwards them.
RE_ID_FIELD = re.compile(
    r"^\s*[*_]{0,2}(?:message-id|in-reply-to|references)\s*[*_]{0,2}\s*:", re.I
)

# A line of nothing but bracketed Message-IDs: a References field wrapped onto more lines.
RE_ID_CONTINUATION = re.compile(r"^\s*(?:<[^<>\s]+>\s*)+$")

# Any RFC 5322 field ("X-Mailer:", "Reply-To:"): a name without spaces, a colon, a value.
RE_RFC_FIELD = re.compile(r"^\s*[*_]{0,2}[A-Za-z][A-Za-z0-9-]{0,40}[*_]{0,2}:(?:\s|$)")

# Message-ID fields are short; a References field of a long thread is the longest we read.
MAX_ID_LINE = 4000


def carries_own_message_id(line: str, previous: str = "") -> bool:
    """True when a (possibly ``>``-quoted) header line names one of our Message-IDs.

    ``previous`` is the line above, so a References field wrapped over several lines
    is recognised on its continuation lines too.
    """
    if len(line) > MAX_ID_LINE:
        return False
    bare = strip_quote_prefix(line)
    if RE_ID_FIELD.match(bare):
        return bool(RE_OWN_MESSAGE_ID.search(bare) or RE_OWN_BARE_ID.search(bare.split(":", 1)[1]))
    if RE_ID_CONTINUATION.match(bare) and len(previous) <= MAX_ID_LINE:
        above = strip_quote_prefix(previous)
        if RE_ID_FIELD.match(above) or RE_ID_CONTINUATION.match(above):
            return bool(RE_OWN_MESSAGE_ID.search(bare))
    return False


def is_header_field(line: str) -> bool:
    """True for one field of a quoted or forwarded header block, in any supported language."""
    bare = strip_quote_prefix(line)
    if len(bare) > MAX_ID_LINE:
        return False
    return bool(
        RE_FROM_FIELD.match(bare)
        or RE_OTHER_FIELD.match(bare)
        or RE_ID_FIELD.match(bare)
        or RE_RFC_FIELD.match(bare)
    )
