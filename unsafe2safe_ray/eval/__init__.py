"""Evaluation suite: does an anonymized dataset stay safe and useful?

Four families of metrics, each in its own module, all computed per (original, anonymized) pair:

- ``privacy``: FaceSim with a re-detection rate (faces that vanish are counted, not skipped), and
  TextSim as token-set similarity next to the character error rate;
- ``judge``: VLM-judged race entropy and VLMScore through the Stage 1 engines (only when a judge
  model is configured);
- ``fidelity``: SSIM / PSNR whole and inside vs outside the sensitive regions, pHash, LPIPS;
- ``quality``: CLIP score against the public caption and directional CLIP.

``runner.evaluate_outputs`` runs them as one Ray Data job and ``report.write_report`` renders the
HTML page; ``utility`` trains the linear probe. ``commands`` holds the two CLI verbs.
"""
