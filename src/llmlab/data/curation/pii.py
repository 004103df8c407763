"""PII scrubbing: e-mail addresses, IP addresses and phone numbers -> placeholders.

Regexes in the spirit of BigScience ROOTS and StarCoder's PII pass (Laurençon et al. 2022;
Allal et al. 2023): precise enough not to eat version numbers or dates, simple enough to read.
IPv4 octets are range-checked (0-255); IPv6 needs at least three hextet groups with "::" or
seven colons; phone numbers need a separator pattern typical of phone numbers (so "1999" or
"3.14159" survive). Placeholders are fixed strings so a model learns the shape, not the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\d.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?![\d.]*\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])|"
                  r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}(?![\w:])")
# +1 (555) 123-4567, 555-123-4567, 555.123.4567, +44 20 7946 0958
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])")


@dataclass
class PIIConfig:
    enabled: bool = field(default=True, metadata={"help": "replace e-mails, IPs and phone numbers"})
    email_placeholder: str = field(default="<EMAIL>", metadata={"help": "replacement for e-mail addresses"})
    ip_placeholder: str = field(default="<IP_ADDRESS>", metadata={"help": "replacement for IP addresses"})
    phone_placeholder: str = field(default="<PHONE>", metadata={"help": "replacement for phone numbers"})


def scrub_pii(text: str, cfg: PIIConfig | None = None) -> tuple[str, dict[str, int]]:
    """(scrubbed text, {"email": n, "ip": n, "phone": n} replacements made)."""
    cfg = cfg or PIIConfig()
    counts = {}
    text, counts["email"] = EMAIL.subn(cfg.email_placeholder, text)
    text, n4 = IPV4.subn(cfg.ip_placeholder, text)
    text, n6 = IPV6.subn(cfg.ip_placeholder, text)
    counts["ip"] = n4 + n6
    text, counts["phone"] = PHONE.subn(cfg.phone_placeholder, text)
    return text, counts
