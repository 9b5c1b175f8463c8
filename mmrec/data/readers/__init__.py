"""Readers: real datasets mapped onto the Parquet schema of convert.py."""
