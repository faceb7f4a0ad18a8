"""Typed clients of the approval gate and the `pj` command line."""
