"""The model-source resolver's fingerprints: which recorded bases an adapter fits."""

from __future__ import annotations


def test_a_quantized_directory_also_answers_to_its_source_fingerprint(tmp_path):
    """An adapter trained on smollm2 may be served on `llmlab quantize`'s copy of it: the quantized
    directory's fingerprints include the sha256 of the model it came from."""
    import json

    from llmlab.model.source import QUANTIZED_FORMAT, ModelSource

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text(json.dumps({"format": QUANTIZED_FORMAT, "source": {"sha256": "abc"}}))
    source = ModelSource("q/int4", "quantized", tmp_path)
    assert source.fingerprints() == {source.fingerprint(), "abc"}
    hf = ModelSource("hf", "hf", tmp_path)
    assert hf.fingerprints() == {hf.fingerprint()}
