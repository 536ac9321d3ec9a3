"""Conversion stages: export (and later optimize, quantize). Heavy imports (torch) stay inside functions."""
