"""The computation of a run: data, model, training, evaluation and the plot stage. Torch; no DVC, no pandas."""
