from melu.cli import main

raise SystemExit(main())
