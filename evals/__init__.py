"""Quality and performance harness for hybrid-router."""
