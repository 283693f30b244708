"""vit-demo: see what a Vision Transformer sees."""
