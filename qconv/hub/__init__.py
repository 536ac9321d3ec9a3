"""The Hugging Face Hub side: the model card and publishing (upload or a clean local copy)."""
