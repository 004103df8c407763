"""Number formats, quantized layers and the methods that choose their codes.

- `int8`, `int4`, `nf4`: the formats and their layers (Int8Linear, Int4Linear, NF4Linear), on the
  shared `linear.QuantizedLinear` (fused few-row kernels from `kernels`, else dequantize + GEMM).
- `gptq`, `awq` (with `calibration`): better codes for the int4 layout from calibration text.
- `quantize`: a whole model by layer name; `artifact`: the quantized model directory.
- `gguf_native`, `gguf_export`: GGUF's Q8_0 / Q4_0 / Q4_1 blocks, in and out, exactly.
"""
