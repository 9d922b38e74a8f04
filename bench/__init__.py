"""The RingBench runner: suites, cells, the result store, leaderboards."""
