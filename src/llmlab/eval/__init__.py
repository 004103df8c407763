"""Evaluation: how good a model is, measured the ways people quote.

    perplexity.py   sliding-window perplexity and bits per byte over a text
"""
