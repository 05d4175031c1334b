"""The verdict: scenarios (one record each), the references they are held against, and the
judgment of each trace by regression, conformance and lint."""
