"""The capstone: a local documentation assistant built from the earlier chapters' pieces
(RAG store and search, the chat model and its engine, LoRA fine-tuning, the server)."""
