"""cascade-math-proofs: the math proofs domain of cascade-rl (writing checkable proofs, and checking them)."""
