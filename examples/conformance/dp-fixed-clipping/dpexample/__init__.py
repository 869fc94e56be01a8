"""dpexample: Flower's quickstart-pytorch with central DP (client-side fixed clipping)
and a privacy accountant."""
