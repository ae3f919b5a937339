"""Call orchestration: one full-duplex conversation per call between the caller and the model."""
