"""Results -> what people read: terminal diffs, deviations, HTML, and the shared value and mark
formatting."""
