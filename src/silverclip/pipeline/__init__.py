"""The end-to-end pipeline (``silverclip run``) and the thesis ablation (``silverclip ablate``)."""
