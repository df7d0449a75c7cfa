"""Image side: SAM with deep instruction tuning (E-DIT, L-DIT) and 2D mask rendering."""
