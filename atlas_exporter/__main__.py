"""Allow `python -m atlas_exporter`."""

from atlas_exporter.cli import main

raise SystemExit(main())
