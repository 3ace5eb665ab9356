"""Benchmarks: programs that time the real entry points and write JSON (see each module)."""
