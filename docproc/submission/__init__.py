"""Jobs going in: one document (``submit``), many as a batch (``batches``), stored documents run
again (``reprocess``) and what a re-run changed (``reprocess_diff``)."""
