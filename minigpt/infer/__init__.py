"""Running a trained model: generation (KV cache, decoding controls, streaming), perplexity, class prediction."""
