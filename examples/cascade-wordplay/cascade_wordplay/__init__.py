"""cascade-wordplay: an example third-party cascade-rl plugin (word games as an RL domain)."""
