"""Data layer: volume readers, dataset adapters (manifests), preprocessing presets and the volume cache."""
