"""``rrec reproduce``: the paper's findings tested on a known-answer world (issue 10, point 5)."""
