"""cloudsim: a faithful OpenStack API simulator for tests, benchmarks and demos."""
