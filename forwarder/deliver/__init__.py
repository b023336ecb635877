"""Delivery: lanes -> batcher -> rate budget -> sender -> outcome -> settlement, per sync."""
