"""What the tests and the benchmarks both stand on: a daphne launcher, real speech and models, and
a loopback LLM."""
