"""A third-party adapter (TinyBatch, inline input) written from the public API and the guide."""
