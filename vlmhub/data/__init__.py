"""Data the project makes itself: the synthetic scenes set and its tokenizer."""
