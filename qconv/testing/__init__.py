"""Test support shipped with qconv: random-weight Qwen3 models with the real vocabulary (plain and with
trained-model activation outliers) and the offline demo."""
