"""Entrypoint for ``ray job submit ... -- python jobs/anonymize.py run --input ... --output ...``.

It is the CLI itself: inside a submitted job ``RAY_ADDRESS`` points at the cluster and
``RAY_JOB_SUBMISSION_ID`` becomes the run id, so ``--submission-id`` names the run.
"""

from unsafe2safe_ray.cli import main

if __name__ == "__main__":
    main()
