"""cascade-math: the math-with-final-answers domain of cascade-rl."""
