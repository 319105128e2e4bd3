"""Scripts that measure speed and memory at scale; results go to docs/PERFORMANCE.md."""
