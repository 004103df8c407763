"""Number formats and quantized layers.

- `nf4`: NormalFloat-4 (QLoRA, Dettmers et al. 2023): `NF4_LEVELS`, `quantize_nf4` / `dequantize_nf4`,
  the `NF4Weight` storage record, and `NF4Linear`, a frozen linear layer stored in 4 bits.
"""
