"""cascade-vllm: the ``vllm`` rollout engine (``rollout=vllm``)."""
