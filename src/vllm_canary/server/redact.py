"""PII and secret redaction for the request log, linear in the text's length.

What is masked, and with which placeholder (found by regex unless said otherwise):

- `[PEM]`: PEM blocks, `-----BEGIN ...-----` to `-----END ...-----` (or to the end of the
  base64 when the END line is missing: a truncated key is still a key).
- `[JWT]`: JSON Web Tokens (`eyJ...` header, payload, signature).
- `[KEY]`: `sk-`/`pk-`/`rk-` keys; GitHub, GitLab, Slack and Hugging Face tokens; AWS access
  key ids (`AKIA...`) and secret keys (40 base64 characters with an upper and a lower case
  letter and a digit); Google API keys (`AIza...`); `Bearer` credentials; hex of 32+ digits.
- `[EMAIL]`: e-mail addresses, found from their `@`: dot-atom and quoted local parts, `+`
  tags, IP-literal domains (`[192.0.2.1]`, `[IPv6:...]`) and internationalised ones (IDN
  labels and UTF-8 local parts, RFC 6531).
- `[PHONE]`: phone numbers in E.164 (`+14155552671`, `+49 30 901820`) and the national
  formats of `regions`, found by Google's libphonenumber (`phonenumbers`, leniency VALID).
  A text over PHONE_EXACT_LIMIT characters is not given to libphonenumber (its cost grows
  with the numbers found: ~45 s for 4 MB of them); there every group of 7 to 15 digits with
  separators is masked instead, which masks more (ids, long numbers) but leaks nothing.

Why linear: a client controls the text (up to the body limit), so no pattern may backtrack
over a run of its own characters more than once. Every pattern starts with a look-behind that
refuses to start inside a run it could have started earlier (so inside a 1 MB word only its
first position is tried), and every repeat is possessive (`++`, `*+`, `{m,n}+`: no giving
back). libphonenumber's matcher is bounded by its own `max_tries`, and it only runs on texts
holding a digit group long enough to be a phone number. bench/bench_redact.py measures it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher

# National formats understood besides E.164 (a leading + is understood in any region).
DEFAULT_REGIONS = ("US", "GB", "DE", "FR", "IN")
PHONE_MAX_TRIES = 4096  # candidates libphonenumber examines per region and text
PHONE_EXACT_LIMIT = 64 * 1024  # characters; longer texts get the conservative pattern

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]{1,64}+-----"
    r"(?:[A-Za-z0-9+/=\s:,.]|-(?!----))*+"
    r"(?:-----END [A-Z0-9 ]{1,64}+-----)?"
)
_JWT = re.compile(r"(?<![\w-])eyJ[\w-]{4,}+\.[\w-]{4,}+\.[\w-]*+")
# Each pattern starts with a literal or a character class (so the regex engine skips ahead
# to where it could start) and checks what precedes it only after that.
_KEYS = tuple(re.compile(p) for p in (
    r"(?:sk|pk|rk)-(?<![\w-]..-)[\w-]{16,}+",  # OpenAI, Anthropic (sk-ant-), Stripe-like
    r"gh[pousr]_(?<![\w-]gh._)[\w-]{16,}+",  # GitHub
    r"github_pat_(?<![\w-]github_pat_)[\w-]{16,}+",
    r"hf_(?<![\w-]hf_)[\w-]{16,}+",  # Hugging Face
    r"glpat-(?<![\w-]glpat-)[\w-]{16,}+",  # GitLab
    r"xox[abprs]-(?<![\w-]xox.-)[\w-]{10,}+",  # Slack
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)(?<![A-Za-z0-9]....)[A-Z0-9]{16}"
    r"(?![A-Za-z0-9])",  # AWS access key id
    r"AIza(?<![\w-]AIza)[\w-]{35}(?![\w-])",  # Google API key
    r"(?i:bearer)(?<![\w-]......)\s++(?=[\w.~+/=-]{0,255}[0-9._~+/=-])[\w.~+/=-]{12,}+",
    # AWS secret access key: 40 base64 characters with an upper and a lower case letter and a
    # digit (so words and hex digests are not taken for one).
    r"[A-Za-z0-9/+](?<![A-Za-z0-9/+=].)(?=[A-Za-z0-9/+]{0,39}[A-Z])"
    r"(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[0-9])[A-Za-z0-9/+]{39}"
    r"(?![A-Za-z0-9/+=])",
    r"[A-Fa-f0-9](?<![A-Za-z0-9].)[A-Fa-f0-9]{31,}+(?![A-Za-z0-9])",  # hex secrets
))
# An e-mail address is found from its @: a local part of dot-atom characters (Unicode letters
# included, as RFC 6531 allows) or a quoted string, and a domain of dotted labels (IDN labels
# are \w too) or an IP literal.
_LOCAL_CHARS = r"\w.!#$%&'*+/=?^`{|}~-"
_EMAIL = re.compile(
    rf"(?:(?<![{_LOCAL_CHARS}])[{_LOCAL_CHARS}]++|\"(?:[^\"\\\r\n]|\\.){{1,128}}+\")"
    r"@(?:\[(?:IPv6:)?[0-9A-Fa-f:.]{2,45}+\]|[\w-]++(?:\.[\w-]++)++)"
)
# Texts with more @ than this get the conservative e-mail mask: any word holding an @. (The
# exact pattern costs ~0.9 s of one regex call on 4 MB of "a@a@...", holding the GIL.)
EMAIL_EXACT_MAX_AT = 4096
_EMAIL_LIKE = re.compile(r"(?<!\S)[^\s@]*+@\S*+")
# A text holds a phone number only if it has 6 digits with at most 3 separators between each.
_DIGITS = re.compile(r"(?<!\d)\d(?:\D{0,3}+\d){5}")
# The conservative stand-in for long texts: an optional +, then 7-15 digits in groups
# separated by up to two spaces, dots, dashes, slashes or parentheses (a longer run is masked
# 15 digits at a time).
_PHONE_LIKE = re.compile(r"[+(\d](?<![\w+(][+(\d])(?:[+(]?\d)(?:[\s./()-]{0,2}+\d){6,14}+")


class Redactor:
    """Masks PII and secrets in text; one instance is reused (it holds no per-text state)."""

    def __init__(self, regions: Iterable[str] = DEFAULT_REGIONS) -> None:
        """`regions`: ISO 3166 alpha-2 codes whose national phone formats are recognised;
        ValueError for one libphonenumber does not know."""
        self.regions = tuple(r.upper() for r in regions)
        unknown = [r for r in self.regions if not region_known(r)]
        if unknown:
            raise ValueError(f"unknown phone region(s) {', '.join(unknown)}: use ISO 3166 "
                             "alpha-2 codes such as US, DE, IN")

    def text(self, text: str) -> tuple[str, bool]:
        """`text` with each finding replaced by its placeholder, and whether any was."""
        out = _sub(_PEM, "[PEM]", text)
        out = _sub(_JWT, "[JWT]", out)
        for key in _KEYS:
            out = _sub(key, "[KEY]", out)
        ats = out.count("@")
        if ats > EMAIL_EXACT_MAX_AT:
            out = _sub(_EMAIL_LIKE, "[EMAIL]", out)
        elif ats:
            out = _sub(_EMAIL, "[EMAIL]", out)
        if _DIGITS.search(out):
            if len(out) > PHONE_EXACT_LIMIT:
                out = _sub(_PHONE_LIKE, "[PHONE]", out)
            else:
                out = self._phones(out)
        return out, out != text

    def _phones(self, text: str) -> str:
        spans: list[tuple[int, int]] = []
        for region in self.regions:
            matcher = PhoneNumberMatcher(text, region, leniency=Leniency.VALID,
                                         max_tries=PHONE_MAX_TRIES)
            spans += [(m.start, m.end) for m in matcher]
        if not spans:
            return text
        pieces, at = [], 0
        for start, end in sorted(spans):
            if start < at:  # overlaps one already masked (the same number, another region)
                if end > at:
                    at = end
                continue
            pieces += [text[at:start], "[PHONE]"]
            at = end
        pieces.append(text[at:])
        return "".join(pieces)


def _sub(pattern: re.Pattern[str], placeholder: str, text: str) -> str:
    """`pattern.sub(placeholder, text)`, one match per call into the regex engine: `sub` is
    one C call that holds the GIL for all of a long text (0.8 s for 500,000 matches in 4 MB),
    stalling the event loop while the log thread redacts; between `finditer` steps the loop
    gets its turn."""
    pieces: list[str] = []
    at = 0
    for match in pattern.finditer(text):
        pieces += [text[at:match.start()], placeholder]
        at = match.end()
    if not pieces:
        return text
    pieces.append(text[at:])
    return "".join(pieces)


def region_known(region: str) -> bool:
    """Whether libphonenumber knows `region` (an ISO 3166 alpha-2 code such as "DE")."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS
