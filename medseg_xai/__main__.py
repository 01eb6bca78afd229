"""``python -m medseg_xai`` runs the command-line interface."""

from medseg_xai.cli import main

raise SystemExit(main())
