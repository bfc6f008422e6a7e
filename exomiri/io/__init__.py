"""Reading rateints segments (fits), sessions (hdf5)."""
