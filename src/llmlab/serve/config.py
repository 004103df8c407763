"""`ServeConfig`: what the HTTP layer needs to know, with one help line per field (shown by
`llmlab serve --help` through llmlab.core.config.add_config_flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmlab.core.config import check, check_fields
from llmlab.core.errors import LLMLabError


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on; 127.0.0.1 keeps the server to this machine, 0.0.0.0 opens it to the network"})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on (0: any free port, printed at start)"})
    api_key_file: str | None = field(default=None, metadata={
        "help": "a file of API keys, one per line (# comments allowed); requests must send one as "
                "`Authorization: Bearer KEY` (None: no key needed)"})
    cors_origins: list[str] = field(default_factory=list, metadata={
        "help": "browser origins allowed to call the API from another page (CORS), e.g. http://localhost:3000; "
                "* for any (empty: off)"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body accepted (413 beyond)"})
    max_prompt_tokens: int = field(default=0, metadata={
        "help": "longest prompt accepted, in tokens (0: the model's context less one generated token)"})
    request_timeout_s: float = field(default=600.0, metadata={
        "help": "a request not done this many seconds after it arrived (queueing included) is cancelled, "
                "with a 504 (0: never)"})
    shutdown_grace_s: float = field(default=30.0, metadata={
        "help": "on SIGTERM/SIGINT, seconds running requests get to finish before they are cancelled"})
    model_name: str | None = field(default=None, metadata={
        "help": "the name /v1/models lists and requests use (None: the model's directory or file name)"})
    max_n: int = field(default=16, metadata={"help": "most choices one request may ask for (n)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check(self, "port", 0 <= self.port <= 65535, "must be a TCP port, 0 to 65535")
        check(self, "max_body_bytes", self.max_body_bytes >= 1024, "must be at least 1024")
        check(self, "max_prompt_tokens", self.max_prompt_tokens >= 0, "must be 0 (the context) or more")
        check(self, "request_timeout_s", self.request_timeout_s >= 0, "must be 0 (never) or more")
        check(self, "shutdown_grace_s", self.shutdown_grace_s >= 0, "must be 0 or more")
        check(self, "max_n", self.max_n >= 1, "must be at least 1")


def read_api_keys(path: str | Path) -> list[str]:
    """The keys in an API key file: one per line, blank lines and `#` comments skipped. An empty
    file is refused: it would lock every client out, which is never what was meant."""
    path = Path(path)
    if not path.is_file():
        raise LLMLabError(f"--api-key-file {path}: no such file; write one key per line into it")
    keys = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise LLMLabError(f"--api-key-file {path} holds no key: write one key per line (e.g. from "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return keys
