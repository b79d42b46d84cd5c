"""The ``embedkit study`` machinery: configuration, grid and fingerprints, results table, report."""
