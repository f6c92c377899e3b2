"""Model builders. `tiny_nemotron_h` makes the small from-scratch NemotronH MoE used by the embedded default."""
