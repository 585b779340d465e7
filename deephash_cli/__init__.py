"""deephash: image retrieval representations (features, triplet embeddings, binary codes) as CLI stages."""

__version__ = "0.1.0"
