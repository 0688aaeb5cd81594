"""Label stores: one implementation per format (``batch``: ours, full and top-k, and the
upstream SRe2L/PRISM stores it reads; ``per_image``: FKD-style per-image crops)."""
