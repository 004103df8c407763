"""Looking inside a model: what it attends to, what each layer would predict, where it is surprised.

    trace.py        one forward pass recording the residual stream, attention, MLP activations; head ablation
    plots.py        the shared figure and heatmap helpers
    lens.py         the logit lens: every layer's residual read out through the final norm and head
    attention.py    attention maps of chosen layers, a grid of heads per layer
    heads.py        scoring every head on a probe: induction, previous token
    ablate.py       knock out heads and measure how the next-token distribution moves
    surprise.py     per-token loss of a text, as coloured HTML / terminal text, the worst spans listed
    activations.py  residual-stream norms, MLP activation histograms, outlier feature dimensions
    embeddings.py   a 2-D PCA picture of chosen tokens' embeddings, and their nearest neighbours

Every probe works on any model `llmlab.model.source.load_model` gives (SmolLM2, a GGUF, an HF
directory, a run directory) and reads it only through `Transformer.forward`'s return_hidden_states /
return_attention and forward hooks on its named Linear layers (trace.py).
"""
