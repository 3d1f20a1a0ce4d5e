"""silverclip: 3D chest-CT vision-language pre-training with cheap (silver) labels."""

__version__ = "0.1.0"
