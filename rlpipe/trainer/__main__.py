"""``python -m rlpipe.trainer --root DIR``: same as the ``rlpipe-train`` console script."""

from rlpipe.trainer.entrypoint import main

raise SystemExit(main())
