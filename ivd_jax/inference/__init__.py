"""Sequential multi-view sampling and exports."""
