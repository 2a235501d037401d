"""Ray Train jobs over the job's own outputs.

- ``pairs``: (original, edited, public caption, instruction) pairs from committed outputs, with
  the paper's CLIP-ratio and no-leak filter;
- ``model``: the two-text InstructPix2Pix editor (fused or concatenated contexts), saving and
  loading it as an editor;
- ``loop``: ``unsafe2safe finetune``, a ``TorchTrainer`` job with resumable checkpoints;
- ``mae``: ``unsafe2safe utility --mode mae-finetune``, the paper's MAE ViT-B/16 classifier.
"""
