"""Sent-from lines: the footer a mail client adds under what the person typed.

One line, tested whole (``MAX_SENT_FROM_LINE`` at most). Rules:

1. English forms of any client: "Sent from my iPhone", "Sent from Mail for
   Windows", "Sent with Spark", "Sent from Yahoo Mail on Android", "Typed on
   a phone";
2. Outlook's app banner in every language it is localised into ("Get
   Outlook for iOS", "Obter o Outlook para Android", "Outlook für iOS
   herunterladen", "Hanki Outlook for Android"), its link after it or inside;
3. "sent from" in other languages, where the verb is common enough to start
   a sentence only with a device, app or client named after it (iPhone, iPad,
   Android, Galaxy, Outlook, Mail, Windows, a phone or mobile in the
   language): Finnish "Lähetetty iPhonesta", Arabic "أُرسلت من الـ iPhone",
   Hungarian "Elküldve az iPhone-omról", Romanian "Trimis de pe iPhone-ul
   meu", Dutch "Verzonden vanuit Outlook voor iOS", Greek, Turkish, Czech,
   Slovak, Croatian, Slovenian, Catalan, Korean, Hebrew, Vietnamese,
   Indonesian;
4. the older forms that need no device word, in the languages where they
   read as nothing but a footer ("Von meinem … gesendet", "Envoyé de mon …",
   "Enviado desde …", "Inviato da …", "Skickat från …", "Отправлено с …",
   "iPhoneから送信", "从我的iPhone发送").
"""

from __future__ import annotations

import regex as re

__all__ = ["MAX_SENT_FROM_LINE", "RE_MOBILE", "is_sent_from"]

# A footer is short; a longer line is prose.
MAX_SENT_FROM_LINE = 120

# A link the client writes after (or inside) its footer: "<https://aka.ms/o0ukef>", "(https://…)".
_LINK = r"(?:\s*<[^<>\s]*>|\s*\(https?://[^()\s]*\))"

# Devices, apps and clients named in footers, and "phone"/"mobile" in the languages of rule 3.
_DEVICE = (
    r"(?:iPhon\w*|iPad\w*|iPod|Apple\s+Watch|Android|Galaxy|Samsung|Huawei|Xiaomi|Pixel|Nokia"
    r"|BlackBerry|Outlook|Mail|Windows|Gmail|Yahoo|Spark|Airmail|Edison|BlueMail|Proton"
    r"|mobil\w*|telefon\w*|okostelefon\w*|smartphone\w*|móvil|mobiel\w*|puhelim\w*"
    r"|κινητό|τηλέφωνο|cep\s+telefonum\w*|手机|휴대폰|모바일|הנייד|הטלפון|điện\s+thoại|ponsel|الهاتف|جوال)"
)

RE_MOBILE = re.compile(
    r"^\s*(?:"
    # Rule 1: English.
    r"sent\s+(?:wirelessly\s+)?(?:from|via|with|using)\s+(?:my|mon|a\s+mobile)\s+[^,.;]{1,40}[.!]?"
    r"|sent\s+(?:from|via|with|using)\s+(?-i:[A-Z0-9])[\w-]*(?:\s+[\w-]+){0,5}[.!]?"
    r"|sent\s+(?:from|via|with)\s+(?:mobile|phone)|(?:from|sent\s+from)\s+my\s+i\w+(?:\s+\w+)?"
    r"|\w+\s+from\s+mobile|sent\s+\S+\s+from\s+my\s+.*|via\s+mobile|typed\s+on\s+(?:a\s+|my\s+)?\S+.*"
    # Rule 2: Outlook's app banner, in any language.
    rf"|(?:\S+\s+){{0,3}}outlook{_LINK}?\s+\S+\s+(?:ios|android|windows|mac){_LINK}?(?:\s+\S+)?"
    rf"|(?:\S+\s+){{0,3}}outlook\s+\S+\s+(?:ios|android|windows|mac){_LINK}?\s+\S+"
    # Rule 3: verbs of other languages, a device named.
    r"|(?:lähetetty|elküldve|küldve|trimis|στάλθηκε|odesláno|odoslané|poslano|enviat|verzonden"
    r"|verstuurd|skickades|gửi|dikirim|dihantar|أُرسلت|أرسلت|أرسل|נשלח|gönderildi|wysłano|wysłane"
    rf"|отправлено|надіслано|enviada|enviado)\b.{{0,40}}{_DEVICE}.{{0,40}}"
    rf"|.{{0,40}}{_DEVICE}.{{0,30}}(?:küldve|gönderildi|에서\s+보냄|에서\s+보낸|から送信|lähetetty)[.!]?"
    # Rule 4: footers of their own in these languages.
    r"|diese\s+nachricht\s+wurde\s+von\s+meinem\s+.*gesendet\.?"
    r"|get\s+outlook\s+for\s+\S+"
    r"|envoyé\s+(?:de|depuis|avec|à\s+partir\s+de)\s+.*"
    r"|von\s+meinem\s+.*gesendet.*|gesendet\s+(?:von|mit|vom)\s+.*"
    r"|enviado\s+(?:desde|do|de|com|con|a\s+partir\s+do)\s+.*"
    r"|inviato\s+da\s+.*"
    r"|verzonden\s+(?:vanaf|vanuit|met|van)\s+.*|verstuurd\s+(?:vanaf|vanuit|met|van)\s+.*"
    r"|skickat\s+från\s+.*|sendt\s+fra\s+.*"
    r"|wysłane\s+z\s+.*|wysłano\s+z\s+.*"
    r"|отправлено\s+(?:с|из)\s+.*|надіслано\s+з\s+.*"
    r"|从我的.*发送|從我的.*傳送|发自我的.*|.*から送信"
    rf"){_LINK}?\s*$",
    re.I,
)


def is_sent_from(line: str) -> bool:
    """True when ``line`` is a client's sent-from footer (by the rules above)."""
    return len(line) <= MAX_SENT_FROM_LINE and bool(RE_MOBILE.match(line))
