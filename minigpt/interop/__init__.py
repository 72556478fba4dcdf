"""Other libraries' checkpoint formats in and out (Hugging Face folders)."""
