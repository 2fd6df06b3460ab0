"""Training (finetune) on PyTorch, with Caffe's and Darknet's semantics.

Optional: needs the ``[finetune]`` extra (torch). Nothing outside this package imports
torch, so ``stat``, ``prune``, ``ana``, ``transform`` and ``forward`` work without it.
"""
