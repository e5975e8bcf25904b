"""The arena's stages: one package per service, each a declaration run by one runner."""
