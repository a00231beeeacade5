"""Wire formats: pure encoders and decoders, no Flask and no I/O."""
