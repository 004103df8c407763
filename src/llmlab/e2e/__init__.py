"""`llmlab e2e`: raw built-in text -> curated -> BPE -> pretrain -> SFT -> eval -> report card."""
