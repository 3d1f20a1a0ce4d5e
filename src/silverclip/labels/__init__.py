"""Label extraction from reports (LLM or rules), label tables and label-quality evaluation."""
