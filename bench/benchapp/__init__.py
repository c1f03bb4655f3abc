"""The models the benchmark writes to; see bench/README.md."""
