"""``qconv bench``: every variant and the PyTorch baseline measured in separate worker processes."""
