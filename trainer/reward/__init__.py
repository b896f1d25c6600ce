"""The reward model: a scalar score r(x, y) of a completion y to a prompt x, learnt from pairs."""
