"""Evaluation from stored embeddings: metrics, bootstrap, zero-shot, retrieval, RAD-ChestCT mapping, reports.

``embeddings`` (compute/load the embeddings folder), ``zero_shot`` (prompt pairs, classifier,
``evaluate_zero_shot``), ``retrieval`` (MAP@K, Recall@K, ``evaluate_retrieval``), ``metrics``,
``bootstrap``, ``radchestct``, ``report``. See docs/evaluation.md.
"""
