"""gvgap."""
