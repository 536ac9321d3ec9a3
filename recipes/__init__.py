"""The bundled recipes (YAML data only): importable as ``qconv.recipes`` so ``qconv demo`` finds them in any install."""
