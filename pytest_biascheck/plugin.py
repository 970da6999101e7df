"""pytest entry point of biascheck (filled in by the foundation work)."""
