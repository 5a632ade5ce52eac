"""A business card ending a reply with no ``-- `` delimiter above it.

Name, title, company, phone numbers, address, web and mail addresses, a logo
and a disclaimer, as Outlook and most corporate mail add them. Rules:

1. the card is read upwards from where it ends (the last line, or the line
   above a sent-from footer), over at most ``MAX_CARD_LINES`` lines and two
   blank lines, each line short (a disclaimer may be long);
2. it stops at a sign-off ("Kind regards,"), which stays with the text, at a
   line ending in a colon (the person introducing a list), at a sentence
   (a line of ``MAX_CARD_WORDS`` words or more, or one holding a finished
   sentence); a paragraph above a blank line joins only when one of its
   lines has a feature;
3. each line is scored by its features: a phone number, a mail or web
   address, a job title, a postal address, a company form, a logo
   placeholder, a disclaimer phrase; a short line of capitalised words
   (a name) carries none but may belong;
4. the block is a card only as a whole: at least two lines, at least
   two kinds of feature of which one is a phone, mail or web address (or
   three kinds without one), and most of its lines featured or name-like;
5. text must remain above it: a card is never the whole reply.

Features rather than a learned classifier: a list of phrases per language
generalises to cards we have not seen as long as they use words a card uses,
and every decision can be read back from the rules.
"""

from __future__ import annotations

import regex as re

__all__ = [
    "MAX_CARD_LINES",
    "RE_DISCLAIMER",
    "RE_NAME_LINE",
    "RE_SIGN_OFF",
    "find_card",
    "is_sentence",
]

# A card is short: name, title, company, two or three numbers, an address, web, disclaimer.
MAX_CARD_LINES = 14
# A line with this many words is a sentence, unless it is a disclaimer.
MAX_CARD_WORDS = 9
MAX_CARD_LINE = 100
MAX_DISCLAIMER_LINE = 1000

RE_PHONE = re.compile(
    r"(?:\b(?:tel|tél|phone|ph|mob|mobile|cell|fax|direct|office|m|t|f|p|d|o|handy|telefon"
    r"|teléfono|tfno|móvil|cel|telefone|telemóvel|telefono|cellulare|portable|gsm|puh|тел)\b\.?\s*:?\s*"
    r"[+(]?\d[\d\s().-]{5,}\d"
    r"|(?:^|[\s|:])\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}"
    r"|(?:^|[\s|:])\(\d{3}\)\s?\d{3}[\s.-]\d{4}"
    r"|(?:^|[\s|:])\d{3}[.-]\d{3}[.-]\d{4}\b)",
    re.I,
)
RE_WEB = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|https?://\S+|\bwww\.\w[\w-]*\.\w+", re.I)
RE_TITLE = re.compile(
    r"\b(?:manager|director|officer|assistant|engineer|consultant|partner|founder|co-founder"
    r"|president|vice\s+president|vp|ceo|cfo|cto|coo|cio|head\s+of|lead|coordinator|specialist"
    r"|analyst|accountant|attorney|lawyer|solicitor|paralegal|counsel|advisor|adviser|secretary"
    r"|administrator|receptionist|executive|associate|representative|agent|broker|developer"
    r"|designer|architect|nurse|physician|therapist|dentist|practitioner|principal|supervisor"
    r"|owner|chair(?:man|woman|person)?|treasurer|bookkeeper|clerk|planner|recruiter|team\s+lead"
    r"|geschäftsführer\w*|steuerberater\w*|rechtsanwält\w*|rechtsanwalt|leiter\w*|referent\w*"
    r"|sachbearbeiter\w*|berater\w*|inhaber\w*|assistenz|vertrieb|prokurist\w*"
    r"|directeur|directrice|responsable|gérant\w*|chargée?\s+de|conseill\w+|avocat\w*|comptable"
    r"|assistante?|ingénieur\w*|chef\s+de|président\w*"
    r"|director[a]?|gerente|responsable|abogad[oa]|asesor[a]?|contable|jef[ea]\s+de|ingenier[oa]"
    r"|direttore|direttrice|responsabile|avvocato|commercialista|consulente|amministrat\w+"
    r"|diretor[a]?|advogad[oa]|contador[a]?|gestor[a]?|directeur|adviseur|medewerker|eigenaar"
    r"|bedrijfsleider|chef|vd|säljare|rådgivare|handläggare|dyrektor|kierownik|specjalista"
    r"|prezes|doradca|księgow\w+|директор|менеджер|бухгалтер|юрист|руководитель)\b",
    re.I,
)
RE_ADDRESS = re.compile(
    r"(?:\b\d{1,5}[a-z]?\s+(?:\p{L}+\s+){0,3}(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr"
    r"|boulevard|blvd|way|place|pl|square|sq|court|ct|quay|quayside|terrace|suite|floor)\b"
    r"|\b(?:\p{L}+(?:straße|strasse|str\.|weg|platz|allee|gasse|ring|damm|laan|straat|gracht"
    r"|plein|vägen|gatan|gata|veien|gade|vej)|rue|avenue|boulevard|chemin|allée|place|calle"
    r"|avenida|plaza|paseo|via|viale|piazza|corso|rua|travessa|largo|ulica|ul\.|улица|ул\.)\s"
    r"|\b[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b|\b\d{5}(?:-\d{4})?\s+\p{Lu}|\b\p{Lu}{2}\s+\d{5}\b"
    r"|\bp\.?\s?o\.?\s+box\b|\bpostfach\b|\bsuite\s+\d)",
    re.I,
)
RE_COMPANY = re.compile(
    r"(?:\b(?:ltd|limited|llc|llp|inc|plc|corp|gmbh|ag|kg|ohg|ug|s\.?a\.?r?\.?l\.?|s\.?a\.?|s\.?l\.?"
    r"|s\.?p\.?a\.?|s\.?r\.?l\.?|b\.?v\.?|n\.?v\.?|oy|ab|as|a/s|aps|sp\.\s*z\s*o\.?\s*o\.?|ооо"
    r"|group|grupo|gruppe|associates|associés|asociados|partners|partner|& co|clinic|klinik"
    r"|clinique|clínica|kanzlei|cabinet|bureau|studio|agency|agentur|solutions|consulting)\b\.?"
    r"|&)",
    re.I,
)
RE_LOGO = re.compile(
    r"^\s*\[(?:image:[^\]]*|cid:[^\]]*|[^\]]{0,60}\blogo\b[^\]]{0,20})\]\s*$", re.I
)
RE_DISCLAIMER = re.compile(
    r"\b(?:confidential|intended\s+(?:solely|only)|received\s+(?:this|it)\s+in\s+error"
    r"|privileged|disclaimer|vertraulich|irrtümlich|confidentiel\w*|destinataire"
    r"|confidencial\w*|destinatario|riservat\w*|confidenziale|vertrouwelijk|konfidentiell"
    r"|poufn\w+|конфиденциальн\w*|please\s+consider\s+the\s+environment|before\s+printing)\b",
    re.I,
)
# A name: one to four capitalised words (initials, particles and hyphens allowed).
RE_NAME_LINE = re.compile(
    r"^\s*(?:(?:\p{Lu}[\p{L}.'’-]*|von|van|de|der|den|da|di|du|del|la|le)\s+){0,3}"
    r"\p{Lu}[\p{L}.'’-]*\s*$"
)
# "Kind regards," "Viele Grüße" "Un saludo," "Cordialement,": the person's own words.
RE_SIGN_OFF = re.compile(
    r"^\s*(?:thanks|thank\s+you|thx|many\s+thanks|regards|best|kind\s+regards|warm\s+regards"
    r"|best\s+regards|best\s+wishes|all\s+the\s+best|cheers|sincerely|yours|respectfully|cordially"
    r"|cordialement|bien\s+(?:à\s+vous|cordialement)|salutations|merci|bonne\s+journée|amitiés"
    r"|(?:viele|liebe|beste|freundliche)\s+grüße|mit\s+freundlichen\s+grüßen|grüße|gruß|lg|vg|mfg"
    r"|un\s+saludo|saludos|atentamente|gracias|cordiales\s+saludos|un\s+abrazo"
    r"|cordiali\s+saluti|saluti|distinti\s+saluti|grazie|un\s+saluto"
    r"|atenciosamente|abraços|obrigad[oa]|cumprimentos|met\s+vriendelijke\s+groet(?:en)?|groeten"
    r"|groet|bedankt|hälsningar|med\s+vänlig\s+hälsning|vänliga\s+hälsningar|mvh|med\s+venlig"
    r"|hilsen|pozdrawiam|z\s+poważaniem|с\s+уважением|спасибо|ystävällisin\s+terveisin|terveisin"
    r"|üdvözlettel|s\s+pozdravem|cu\s+stimă|με\s+εκτίμηση|saygılarımla)\b.*$",
    re.I,
)
# First and second person and requests: a card states, a person speaks ("call me on …").
_RE_PERSONAL = re.compile(
    r"\b(?-i:I)\b|\b(?:me|my|mine|you|your|we|us|our|please|ich|mich|mir|mein\w*|wir|uns|bitte"
    r"|je|moi|mon|ma|mes|nous|vous|merci|yo|mi|mis|nosotros|por\s+favor|io|mio|mia|noi"
    r"|eu|meu|minha|nós|ik|mij|mijn|wij|jag|mig|min|mitt|jeg|mitt|ja|mnie|mój|moja|я|мой|мне)\b",
    re.I,
)
_SENTENCE = re.compile(r"\p{Ll}{2}[.!?](?:\s+\p{Lu}|\s*$)")
_FEATURES = {
    "phone": RE_PHONE,
    "web": RE_WEB,
    "title": RE_TITLE,
    "address": RE_ADDRESS,
    "company": RE_COMPANY,
}
_CONTACT = ("phone", "web")


def _features(line: str) -> set[str]:
    if RE_LOGO.match(line):
        return {"logo"}
    if RE_DISCLAIMER.search(line):
        return {"disclaimer"}
    if len(line) > MAX_CARD_LINE:
        return set()
    found = {name for name, pattern in _FEATURES.items() if pattern.search(line)}
    if found - {"phone", "web"} and is_sentence(line):
        return found & {"phone", "web"}
    return found


def is_sentence(line: str) -> bool:
    """A sentence: a long run of words, or four words or more ending like one ("… moved.").

    Cards set fields side by side ("Name | Title | Company"): each field is judged alone.
    """
    for field in _RE_FIELD_SEPARATOR.split(line):
        words = field.split()
        if len(words) >= MAX_CARD_WORDS or (len(words) >= 4 and _SENTENCE.search(field)):
            return True
    return False


_RE_FIELD_SEPARATOR = re.compile(r"\s[|·•]\s|\s{3,}")


def _belongs(line: str, features: set[str]) -> bool:
    """Whether a line may be part of a card at all (rule 2's stops excluded)."""
    if "disclaimer" not in features and _RE_PERSONAL.search(line):
        return False  # "call me on …", "my new address is …": the person speaking
    if features:
        return "disclaimer" in features or len(line) <= MAX_CARD_LINE
    return len(line) <= 60 and not is_sentence(line) and len(line.split()) <= 6


def find_card(lines: list[str], end: int | None = None) -> int | None:
    """Index of the first line of a card ending at ``end`` (default: the last line), or None."""
    end = len(lines) if end is None else end
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    first_text = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    start = end
    scored: list[tuple[set[str], str]] = []
    i, gaps = end - 1, 0
    while i > first_text and gaps <= 2:
        # One paragraph, bottom up; above a gap only a paragraph with a featured line joins.
        taken: list[tuple[set[str], str]] = []
        top, stopped = i + 1, False
        while i > first_text and lines[i].strip():
            line = lines[i]
            features = _features(line) if len(line) <= MAX_DISCLAIMER_LINE else set()
            if (
                RE_SIGN_OFF.match(line)
                or line.rstrip().endswith((":", "："))
                or not _belongs(line, features)
                or len(scored) + len(taken) >= MAX_CARD_LINES
            ):
                stopped = True
                break
            taken.append((features, line))
            top = i
            i -= 1
        if i <= first_text and not stopped:
            return None  # the card would run up to the first line: it is the whole reply
        if taken and (not scored or any(f for f, _ in taken)):
            scored.extend(taken)
            start = top
        elif scored:
            break
        if stopped or not taken:
            break
        while i > first_text and not lines[i].strip():
            i -= 1
        gaps += 1
    if start >= end or start <= first_text:
        return None
    # The line just above the card must not introduce it ("Call one of these:").
    above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
    if above.rstrip().endswith((":", "：")):
        return None
    kinds: set[str] = set().union(*(f for f, _ in scored))
    featured = sum(1 for f, _ in scored if f)
    named = sum(1 for f, line in scored if not f and RE_NAME_LINE.match(line))
    card = (
        len(scored) >= 2
        and featured >= 2
        and ((bool(kinds & set(_CONTACT)) and len(kinds) >= 2) or len(kinds) >= 3)
        and (featured + named) * 3 >= len(scored) * 2
    )
    return start if card else None
