"""Linear evaluation and kNN on frozen encoder features (the Ring paper's headline protocol)."""
