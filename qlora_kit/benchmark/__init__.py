"""`qlora-kit bench`: measured tokens/s and peak memory per backend, sequence length and batch size."""
