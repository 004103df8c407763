"""Small shared pieces every area uses: errors, atomic writes, devices, configs, assets."""

from llmlab.core.errors import LLMLabError

__all__ = ["LLMLabError"]
