"""DomainOS benchmarks: they print their figures and write JSON; they are not tests."""
