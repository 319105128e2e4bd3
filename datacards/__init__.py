"""Dataset card builder: statistics, figures and the Hub datasheet."""
